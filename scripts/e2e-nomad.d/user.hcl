# Check user: capabilities and groups of a task run as nobody.
job "@JOB@" {
  datacenters = ["dc1"]
  type        = "batch"

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
      user   = "nobody"

      config {
        command = "/bin/sh"
        args    = ["-c", "grep CapEff /proc/self/status; echo uid $(id -u); echo groups $(id -G)"]
      }

      resources {
        cpu    = 100
        memory = 64
      }
    }
  }
}
