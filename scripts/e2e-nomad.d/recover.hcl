# Check recover: a tick with the time every second, SIGPIPE ignored (a dead log reader must not kill it).
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
        args    = ["-c", "trap '' PIPE; echo pid $$; while :; do echo tick $(date +%s); sleep 1; done"]
      }

      resources {
        cpu    = 100
        memory = 64
      }
    }
  }
}
