# Check batch: one alloc exits 0 (complete), the other exits 3 (failed, exit code 3).
job "@JOB@" {
  datacenters = ["dc1"]
  type        = "batch"

  group "ok" {
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
        args    = ["-c", "echo batch ok; exit 0"]
      }

      resources {
        cpu    = 100
        memory = 64
      }
    }
  }

  group "fail" {
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
        args    = ["-c", "echo batch failing; exit 3"]
      }

      resources {
        cpu    = 100
        memory = 64
      }
    }
  }
}
