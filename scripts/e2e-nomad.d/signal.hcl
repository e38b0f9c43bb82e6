# Check signal: a trap for SIGUSR1 that logs.
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
        args    = ["-c", "trap 'echo got SIGUSR1' USR1; echo ready; while :; do sleep 1 & wait $!; done"]
      }

      resources {
        cpu    = 100
        memory = 64
      }
    }
  }
}
