//! The executor's argv JSON (`ExecutorConfig::from_args`; nomad-executor-logmon.md §3.1,
//! nomad-versions.md §1.1): what `nomad executor <json>` gets from a 1.6 or 2.x agent.
//!
//! Input: the argument's bytes (any bytes: argv is not UTF-8 by rule). Properties: never a
//! panic; an accepted config has a valid log level and a CPU capacity; re-encoded with its Go
//! field names it decodes to the same config.
#![no_main]

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;

use goplugin::nomad::executor::config::ExecutorConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let args = [OsString::from_vec(data.to_vec())];
    let Ok(cfg) = ExecutorConfig::from_args(&args) else {
        return;
    };
    cfg.filter_directive()
        .expect("accepted means a known level");
    let compute = cfg.effective_compute();
    if cfg.cpu_total_ticks.is_none() {
        assert_eq!(compute, cfg.compute);
    }
    let mut json = serde_json::json!({
        "LogFile": cfg.log_file,
        "LogLevel": cfg.log_level,
        "FSIsolation": cfg.fs_isolation,
        "Compute": {"tc": cfg.compute.total_mhz, "nc": cfg.compute.cores},
    });
    if let Some(ticks) = cfg.cpu_total_ticks {
        json["CpuTotalTicks"] = ticks.into();
    }
    let again = ExecutorConfig::from_args(&[json.to_string().into()]).expect("re-encoded");
    assert_eq!(again, cfg);
});
