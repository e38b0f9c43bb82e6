# Check stats: burns CPU for 30 s, then sleeps.
job "@JOB@" {
  datacenters = ["dc1"]
  type        = "service"

  group "g" {
    restart {
      attempts = 0
      mode     = "fail"
    }

    reschedule {
      attempts  = 0
      unlimited = false
    }

    task "t" {
      driver = "@DRIVER@"

      config {
        command = "/bin/sh"
        args    = ["-c", "echo ready; end=$(($(date +%s) + 30)); while [ $(date +%s) -lt $end ]; do i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; done; echo done burning; exec sleep 3600"]
      }

      resources {
        cpu    = 100
        memory = 64
      }
    }
  }
}
