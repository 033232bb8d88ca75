mod common;
use common::*;
use proxy_wasm_host::vm::VmOptions;
use proxy_wasm_host::plugin::PluginInfo;

#[test]
fn probe() {
    let code = built_code("as_filter.wasm");
    let mut h = Harness::try_start_code(code.clone(), "tag=t;local_status=451", VmOptions::new(unique_vm_id("a"))).unwrap();
    let (ctx, s, v) = h.request(&[(":method","GET"),(":path","/as-local?x"),(":authority","h")], true);
    eprintln!("{v:?} {:?}", s.data().local_response);
    eprintln!("{:?}", s.data().request_headers);
    let (ctx, s, v) = h.request(&[(":method","GET"),(":path","/x"),(":authority","h")], true);
    let v = h.respond(ctx, &s, &[(":status","200")], true);
    eprintln!("{v:?} {:?}", s.data().response_headers);
    h.vm.finish_stream(ctx).unwrap();
    eprintln!("{:#?}", h.server.logs());
    let r = Harness::try_start_plugin(code.clone(), PluginInfo::new("p","other",unique_vm_id("a"),""), VmOptions::new(unique_vm_id("a")), TestServer::new());
    eprintln!("{:?}", r.err());
    let r = Harness::try_start_code(code.clone(), "reject", VmOptions::new(unique_vm_id("a")));
    eprintln!("{:?}", r.err());
}
