# Check oom: allocates 200 MB (one dd buffer) under a 32 MB limit; dd is the main process.
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

      config {
        command = "/bin/sh"
        args    = ["-c", "echo allocating; exec dd if=/dev/zero of=/dev/null bs=200M count=1"]
      }

      resources {
        cpu    = 100
        memory = 32
      }
    }
  }
}
