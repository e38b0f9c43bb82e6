# Check kill: `nomad job stop` with three kill_signal/kill_timeout settings.
#   int:      kill_signal SIGINT, traps it, logs and exits 0 (long kill_timeout, never reached)
#   term:     kill_signal SIGTERM (not the default), traps it; SIGINT would exit 1
#   stubborn: ignores SIGINT, so it is SIGKILLed after its kill_timeout of 3 s
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

    task "int" {
      driver       = "@DRIVER@"
      kill_signal  = "SIGINT"
      kill_timeout = "10s"

      config {
        command = "/bin/sh"
        args    = ["-c", "trap 'echo got SIGINT; exit 0' INT; echo ready; while :; do sleep 1 & wait $!; done"]
      }

      resources {
        cpu    = 100
        memory = 32
      }
    }

    task "term" {
      driver       = "@DRIVER@"
      kill_signal  = "SIGTERM"
      kill_timeout = "10s"

      config {
        command = "/bin/sh"
        args    = ["-c", "trap 'echo got SIGTERM; exit 0' TERM; trap 'echo got SIGINT; exit 1' INT; echo ready; while :; do sleep 1 & wait $!; done"]
      }

      resources {
        cpu    = 100
        memory = 32
      }
    }

    task "stubborn" {
      driver       = "@DRIVER@"
      kill_signal  = "SIGINT"
      kill_timeout = "3s"

      config {
        command = "/bin/sh"
        args    = ["-c", "trap '' INT; echo ready; while :; do sleep 1; done"]
      }

      resources {
        cpu    = 100
        memory = 32
      }
    }
  }
}
