//! Header templates: any text compiles or says why; a compiled one renders without panic.
#![no_main]
use graygate::plan::{Template, Vars};
use libfuzzer_sys::fuzz_target;

struct V;
impl Vars for V {
    fn client(&self) -> Option<std::net::SocketAddr> {
        "10.1.2.3:4".parse().ok()
    }
    fn header(&self, _: &str) -> Option<&[u8]> {
        Some(b"a\x00\xff")
    }
    fn host(&self) -> &[u8] {
        b"h"
    }
    fn path_and_query(&self) -> &str {
        "/p?q"
    }
    fn method(&self) -> &str {
        "GET"
    }
    fn server_port(&self) -> Option<u16> {
        Some(80)
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(t) = Template::compile(text) {
        let mut out = Vec::new();
        t.render(&V, &mut out);
    }
});
