use portico::plugins::sandbox::{Limits, Sandbox};
use std::time::Instant;
fn main() {
    let engine = portico::plugins::engine().unwrap();
    let module = wasmtime::Module::new(
        &engine,
        r#"(module (memory (export "memory") 1)
      (func (export "proxy_on_log") (param i32))
      (func (export "proxy_on_done") (param i32) (result i32) i32.const 1))"#,
    )
    .unwrap();
    let linker = wasmtime::Linker::new(&engine);
    let mut s = Sandbox::new("x", &engine, &module, &linker, Limits::default(), ()).unwrap();
    let n = 5_000_000u32;
    for _ in 0..3 {
        let t = Instant::now();
        for i in 0..n {
            s.call::<i32, ()>("proxy_on_log", i as i32).unwrap();
        }
        let a = t.elapsed().as_nanos() as f64 / n as f64;
        let f = module.clone();
        let _ = f;
        println!("Sandbox::call {a:.1} ns");
    }
    let mut store = wasmtime::Store::new(&engine, ());
    store.set_epoch_deadline(1000);
    let inst = wasmtime::Linker::<()>::new(&engine)
        .instantiate(&mut store, &module)
        .unwrap();
    let f = inst
        .get_typed_func::<i32, ()>(&mut store, "proxy_on_log")
        .unwrap();
    for _ in 0..3 {
        let t = Instant::now();
        for i in 0..n {
            f.call(&mut store, i as i32).unwrap();
        }
        println!(
            "raw TypedFunc::call {:.1} ns",
            t.elapsed().as_nanos() as f64 / n as f64
        );
    }
}
