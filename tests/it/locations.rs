//! nginx's location matching through the real gateway, checked against real nginx where it is
//! installed: the same paths reach the same app.

use std::time::Duration;

use crate::common::*;

/// The apps, each a demo backend answering with its name; one process serves them all.
const APPS: [&str; 5] = ["root", "media", "images", "static", "exact"];

/// (location as nginx writes it, as graygate's YAML writes it, app)
const LOCATIONS: [(&str, &str, &str); 5] = [
    ("/", "/", "root"),
    ("~/media/", "~/media/", "media"),
    ("~* \\.(png|gif)$", "\"~* \\\\.(png|gif)$\"", "images"),
    ("^~ /static/", "^~ /static/", "static"),
    ("= /exact", "= /exact", "exact"),
];

/// (request path, the app nginx sends it to, or the status it answers with)
const PATHS: [(&str, &str); 15] = [
    ("/", "root"),
    ("/media/a.txt", "media"),
    ("/x/media/b", "media"),
    ("/x/../media/a", "media"),
    ("/%6Dedia/a", "media"),
    ("//media//a", "media"),
    ("/MEDIA/a", "root"),
    ("/a.PNG", "images"),
    ("/media/a.png", "media"),
    ("/static/a.png", "static"),
    ("/exact", "exact"),
    ("/exact/", "root"),
    ("/../x", "400"),
    ("/a%zz", "400"),
    ("/%2e%2e/x", "400"),
];

fn apps(dir: &TempDir) -> (Proc, Vec<u16>) {
    let ports: Vec<u16> = APPS.iter().map(|_| free_port()).collect();
    let mut conf = format!(
        "pid_file: {}\nerror_log: {}\ndemo_backends:\n",
        dir.s("apps.pid"),
        dir.s("apps.log")
    );
    for (name, port) in APPS.iter().zip(&ports) {
        conf.push_str(&format!(
            "  - {{ listen: \"127.0.0.1:{port}\", name: {name} }}\n"
        ));
    }
    let p = start(&dir.write("apps.yaml", &conf), &ports);
    (p, ports)
}

fn port_of(app: &str, ports: &[u16]) -> u16 {
    ports[APPS.iter().position(|a| *a == app).unwrap()]
}

fn check(port: u16, who: &str) {
    for (path, want) in PATHS {
        let r = get_from(port, path, None, &[]).unwrap();
        let got = if r.status == 200 {
            r.backend().to_string()
        } else {
            r.status.to_string()
        };
        assert_eq!(got, want, "{who}: {path}");
    }
}

#[test]
fn paths_reach_the_location_nginx_picks() {
    let dir = TempDir::new("locations");
    let (_apps, ports) = apps(&dir);
    let front = free_port();
    let mut conf = format!(
        "pid_file: {}\nerror_log: {}\nupstreams:\n",
        dir.s("gw.pid"),
        dir.s("error.log")
    );
    for (app, port) in APPS.iter().zip(&ports) {
        conf.push_str(&format!(
            "  {app}: {{ servers: [{{ addr: \"127.0.0.1:{port}\" }}] }}\n"
        ));
    }
    conf.push_str(&format!(
        "servers:\n  front:\n    listen: [\"127.0.0.1:{front}\"]\n    locations:\n"
    ));
    for (_, yaml, app) in LOCATIONS {
        conf.push_str(&format!("      - {{ match: {yaml}, proxy_pass: {app} }}\n"));
    }
    let _gw = start(&dir.write("gw.yaml", &conf), &[front]);
    check(front, "graygate");

    let mut server = String::new();
    for (nginx, _, app) in LOCATIONS {
        let p = port_of(app, &ports);
        server.push_str(&format!(
            "location {nginx} {{ proxy_pass http://127.0.0.1:{p}; }}\n"
        ));
    }
    let Some((_nginx, nport)) = nginx_with(&dir, "", &server) else {
        eprintln!("nginx not installed: routing not compared");
        return;
    };
    wait_for("nginx", Duration::from_secs(10), || port_open(nport));
    check(nport, "nginx");
}

/// `add_header` (inherited from the server unless a location has its own, 2xx/3xx only
/// unless `always`) and `return` answer as nginx's do.
#[test]
fn add_header_and_return_as_nginx() {
    let dir = TempDir::new("add-header");
    let (_apps, ports) = apps(&dir);
    let (root, media) = (port_of("root", &ports), port_of("media", &ports));
    let front = free_port();
    let conf = format!(
        "pid_file: {}\nerror_log: {}\nupstreams:\n  root: {{ servers: [{{ addr: \"127.0.0.1:{root}\" }}] }}\n  \
         media: {{ servers: [{{ addr: \"127.0.0.1:{media}\" }}] }}\n\
         servers:\n  front:\n    listen: [\"127.0.0.1:{front}\"]\n    add_header: {{ X-Server: s }}\n    locations:\n\
         \x20     - {{ match: /, proxy_pass: root }}\n\
         \x20     - {{ match: /media/, proxy_pass: media, add_header: {{ X-Media: m, X-Always: {{ value: yes, always: true }} }} }}\n\
         \x20     - {{ match: = /old, return: \"301 /new$is_args$args\" }}\n\
         \x20     - {{ match: = /ok, return: \"200 fine\" }}\n\
         \x20     - {{ match: = /gone, return: 410 }}\n",
        dir.s("gw.pid"),
        dir.s("error.log"),
    );
    let _gw = start(&dir.write("gw.yaml", &conf), &[front]);
    let server = format!(
        "add_header X-Server s;\n\
         location / {{ proxy_pass http://127.0.0.1:{root}; }}\n\
         location /media/ {{ proxy_pass http://127.0.0.1:{media}; add_header X-Media m; add_header X-Always yes always; }}\n\
         location = /old {{ return 301 /new$is_args$args; }}\n\
         location = /ok {{ return 200 fine; }}\n\
         location = /gone {{ return 410; }}\n"
    );
    let nginx = nginx_with(&dir, "", &server);
    let mut targets = vec![("graygate", front)];
    if let Some((_, p)) = &nginx {
        targets.push(("nginx", *p));
    } else {
        eprintln!("nginx not installed: add_header and return not compared");
    }
    for (who, port) in targets {
        let r = get_from(port, "/x", None, &[]).unwrap();
        assert_eq!(r.header("X-Server"), Some("s"), "{who}");
        let r = get_from(port, "/media/a", None, &[]).unwrap();
        assert_eq!(r.header("X-Media"), Some("m"), "{who}");
        assert_eq!(r.header("X-Server"), None, "{who}: own list replaces");
        let r = get_from(port, "/media/a?status=500&only=media", None, &[]).unwrap();
        assert_eq!(r.status, 500, "{who}");
        assert_eq!(r.header("X-Media"), None, "{who}: not on a 500");
        assert_eq!(r.header("X-Always"), Some("yes"), "{who}: always");
        let r = get_from(port, "/old?a=1", None, &[]).unwrap();
        assert_eq!(r.status, 301, "{who}");
        assert_eq!(
            r.header("Location"),
            Some(format!("http://localhost:{port}/new?a=1").as_str()),
            "{who}"
        );
        assert_eq!(r.header("X-Server"), Some("s"), "{who}");
        let r = get_from(port, "/ok", None, &[]).unwrap();
        assert_eq!((r.status, r.body.as_str()), (200, "fine"), "{who}");
        let r = get_from(port, "/gone", None, &[]).unwrap();
        assert_eq!(r.status, 410, "{who}");
        assert_eq!(r.header("X-Server"), None, "{who}: 410 gets none");
    }
}

/// A path no location matches gets nginx's 404 and the connection stays open for the next
/// request, as nginx keeps it.
#[test]
fn a_404_keeps_the_connection() {
    use std::io::{BufReader, Write};
    let dir = TempDir::new("loc-404");
    let (_apps, ports) = apps(&dir);
    let root = port_of("root", &ports);
    let front = free_port();
    let conf = format!(
        "pid_file: {}\nerror_log: {}\nupstreams:\n  root: {{ servers: [{{ addr: \"127.0.0.1:{root}\" }}] }}\n\
         servers:\n  front:\n    listen: [\"127.0.0.1:{front}\"]\n    locations:\n      - {{ match: /app/, proxy_pass: root }}\n",
        dir.s("gw.pid"),
        dir.s("error.log"),
    );
    let _gw = start(&dir.write("gw.yaml", &conf), &[front]);
    let s = connect(front, None).unwrap();
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    w.write_all(b"GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let first = read_response(&mut r).unwrap();
    assert_eq!(first.status, 404);
    assert_ne!(first.header("Connection"), Some("close"));
    w.write_all(b"GET /app/x HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let second = read_response(&mut r).unwrap();
    assert_eq!((second.status, second.backend()), (200, "root"));
}
