# Check logs: numbered lines on stdout and stderr, two a second.
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
        args    = ["-c", "i=0; while :; do i=$((i+1)); echo out $i; echo err $i >&2; sleep 0.5; done"]
      }

      resources {
        cpu    = 100
        memory = 64
      }
    }
  }
}
