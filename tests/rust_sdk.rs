mod common;
use common::*;
use proxy_wasm_host::vm::VmOptions;

#[test]
fn probe() {
    let t = std::time::Instant::now();
    let code = built_code("rust_sdk_filter.wasm");
    eprintln!("compile {:?}", t.elapsed());
    let mut h = Harness::try_start_code(code, "", VmOptions::new(unique_vm_id("p"))).unwrap();
    eprintln!("start {:?}", t.elapsed());
    let (ctx, s, v) = h.request(&[(":method","GET"),(":path","/x?y"),(":authority","h"),(":scheme","http"),("x-pw-test","headers pseudo config properties grpc metrics log time sizes effective-context foreign")], true);
    eprintln!("{v:?} {:#?}", s.data());
    let v = h.respond(ctx, &s, &[(":status","200"),("content-type","text/html"),("x-pw-resp-remove","x")], true);
    eprintln!("{v:?}");
    for (k,v) in s.data().response_headers { eprintln!("{}: {}", String::from_utf8_lossy(&k), String::from_utf8_lossy(&v)); }
    h.vm.finish_stream(ctx).unwrap();
    for k in ["vm.config","vm.config.size","vm.starts","configure.count","config.size","config.error","root.request.path","root.plugin_name","root.plugin_root_id","root.plugin_vm_id","log.count","log.last","done.count","delete.count"] { eprintln!("{k} = {:?}", h.shared(k)); }
    let (ctx, s, v) = h.request(&[(":method","GET"),(":path","/x"),("x-pw-test","panic")], true);
}
