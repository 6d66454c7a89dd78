//! Any bytes as a control plugin's answer: the schema checks refuse what
//! they do not accept, with a reason, and never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portico_model::control::LbService;

fuzz_target!(|data: &[u8]| {
    let _ = portico_wasm::admission::parse_answer(data);
    let _ = portico_model::policy::parse_answer(data);
    let asked = [LbService {
        namespace: "default".into(),
        name: "web".into(),
        load_balancer_ip: None,
        annotations: Default::default(),
        current: vec![],
    }];
    let gateways = [LbService {
        name: "edge".into(),
        ..asked[0].clone()
    }];
    if let Err(why) = portico_wasm::lb_addresses::parse_answer(data, &asked, &gateways) {
        assert!(!why.is_empty());
    }
});
