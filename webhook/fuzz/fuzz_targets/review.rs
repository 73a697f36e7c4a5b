//! Fuzzes the request decoder and the mutation together: any byte string
//! must produce a valid AdmissionReview answer, and any patch it returns must
//! apply to the request's object and still describe a valid Pod.
//!
//! Seed corpus: the real reviews in shared/fixtures/admission
//! (`cargo +nightly fuzz run review ../../../shared/fixtures/admission`).
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use webhook::mutate::InjectConfig;
use webhook::state::State;

static STATE: LazyLock<(State, InjectConfig)> =
    LazyLock::new(|| (webhook::testing::busy_state(), InjectConfig::default()));

fuzz_target!(|data: &[u8]| {
    let (state, cfg) = &*STATE;
    let answer = webhook::review::answer(data, state, cfg);
    if let Err(e) = webhook::testing::check_answer(data, &answer.body) {
        panic!("{e}");
    }
});
