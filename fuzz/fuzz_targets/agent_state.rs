//! The state file `goplugin run --detach` leaves in `<task dir>/state.json`, decoded as
//! `goplugin::nomad::agent::load_state` decodes it (Go's JSON rules, into `TaskState`).
//!
//! Properties: never a panic; an accepted state, written back as the agent writes it
//! (`serde_json::to_string_pretty`), decodes to the same state and the same text.
#![no_main]

use goplugin::fuzzing::agent_state;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(state) = agent_state(text) else {
        return;
    };
    let written = serde_json::to_string_pretty(&state).expect("serialises");
    let again = agent_state(&written).expect("what the agent writes, it reads");
    assert_eq!(again.executor, state.executor);
    assert_eq!(again.logmon, state.logmon);
    assert_eq!(serde_json::to_string_pretty(&again).unwrap(), written);
});
