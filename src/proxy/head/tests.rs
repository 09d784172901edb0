use super::*;

fn check(bytes: &[u8]) -> Verdict {
    Scan::default().feed(bytes, &Limits::default())
}

fn status(bytes: &[u8]) -> u16 {
    match check(bytes) {
        Verdict::Done(_) => 200,
        Verdict::More => 0,
        Verdict::Reject(r) => r.status,
    }
}

#[test]
fn plain_requests_pass() {
    assert_eq!(status(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"), 200);
    assert_eq!(status(b"\r\nGET /x?y HTTP/1.0\r\n\r\n"), 200);
    assert_eq!(status(b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n"), 200);
    assert_eq!(status(b"GET http://a/x HTTP/1.1\r\nHost: A\r\n\r\n"), 200);
    assert_eq!(
        status(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n"),
        200
    );
    assert_eq!(status(b"GET / HTTP/1.1\r\nHost: a\r\n"), 0);
}

#[test]
fn smuggling_and_malformed_are_refused_as_nginx() {
    for (req, want) in [
        (
            &b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
            400,
        ),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +1\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501),
        (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX: b\r\n c\r\n\r\n", 400),
        (b"GET / HTTP/1.1\nHost: a\n\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX: b\rc\r\n\r\n", 400),
        (b"GET /a\0b HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX\0: b\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX@Y: b\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", 400),
        (b"GET http://evil/ HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        (b"G(T / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"GET x HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505),
        (b"GET / HTTP/1.x\r\nHost: a\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1048577\r\n\r\n", 413),
    ] {
        assert_eq!(status(req), want, "{}", req.escape_ascii());
    }
}

#[test]
fn long_lines() {
    let line = format!("GET /{} HTTP/1.1\r\n", "a".repeat(9000));
    // Refused before the line ends: the buffer never grows past the limit.
    assert_eq!(status(&line.as_bytes()[..8500]), 414);
    let head = format!("GET / HTTP/1.1\r\nHost: a\r\nX: {}", "b".repeat(9000));
    match check(head.as_bytes()) {
        Verdict::Reject(r) => assert_eq!(r.title, "400 Request Header Or Cookie Too Large"),
        v => panic!("{v:?}"),
    }
    let many: String = (0..257).map(|i| format!("X-{i}: v\r\n")).collect();
    let head = format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n");
    assert_eq!(status(head.as_bytes()), 400);
    let total: String = (0..6)
        .map(|i| format!("X-{i}: {}\r\n", "v".repeat(7000)))
        .collect();
    let head = format!("GET / HTTP/1.1\r\nHost: a\r\n{total}\r\n");
    assert_eq!(status(head.as_bytes()), 400);
}

#[test]
fn underscores_are_marked_for_dropping() {
    let req = b"GET / HTTP/1.1\r\nHost: a\r\nX_Real_IP: 1.2.3.4\r\nX-Ok: 1\r\n\r\n";
    let Verdict::Done(h) = check(req) else {
        panic!()
    };
    assert_eq!(&req[h.drop[0].clone()], b"X_Real_IP: 1.2.3.4\r\n");
    let lim = Limits {
        underscores: true,
        ..Limits::default()
    };
    let Verdict::Done(h) = Scan::default().feed(req, &lim) else {
        panic!()
    };
    assert!(h.drop.is_empty());
}

#[test]
fn byte_by_byte_equals_at_once() {
    let req = b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nX_Y: z\r\n\r\nabc";
    let mut scan = Scan::default();
    let mut got = Verdict::More;
    for n in 1..=req.len() {
        got = scan.feed(&req[..n], &Limits::default());
        if got != Verdict::More {
            break;
        }
    }
    assert_eq!(got, check(req));
}

#[test]
fn parts_of_a_bad_request_line() {
    assert_eq!(
        request_parts(b"G(T /x HTTP/1.1\r\n"),
        (&b"G(T"[..], &b"/x"[..], &b"HTTP/1.1"[..])
    );
    assert_eq!(request_parts(b""), (&b""[..], &b""[..], &b""[..]));
}

mod props {
    use super::*;
    use proptest::prelude::*;

    const GOOD: &[u8] =
        b"POST /p?q=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nX_Y: z\r\n\r\nabc";

    fn verdict_at_once(b: &[u8], lim: &Limits) -> Verdict {
        Scan::default().feed(b, lim)
    }

    fn verdict_in_pieces(b: &[u8], cuts: &[usize], lim: &Limits) -> Verdict {
        let mut scan = Scan::default();
        let mut ends: Vec<usize> = cuts.iter().map(|c| c % (b.len() + 1)).collect();
        ends.push(b.len());
        ends.sort_unstable();
        let mut v = Verdict::More;
        for e in ends {
            v = scan.feed(&b[..e], lim);
            if v != Verdict::More {
                break;
            }
        }
        v
    }

    fn small_limits() -> Limits {
        Limits {
            line_max: 40,
            head_max: 120,
            max_headers: 4,
            max_body: 10,
            ..Limits::default()
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

        /// Whatever arrives, in whatever pieces: no panic, the same verdict, and a passed
        /// head never longer than what was read nor than the limit.
        #[test]
        fn any_bytes_any_pieces(b in proptest::collection::vec(any::<u8>(), 0..200),
                                cuts in proptest::collection::vec(any::<usize>(), 0..8)) {
            for lim in [Limits::default(), small_limits()] {
                let whole = verdict_at_once(&b, &lim);
                prop_assert_eq!(&verdict_in_pieces(&b, &cuts, &lim), &whole);
                if let Verdict::Done(h) = whole {
                    prop_assert!(h.len <= b.len() && h.len <= lim.head_max);
                }
            }
        }

        /// A valid request with one byte changed: no panic, and the verdict does not depend
        /// on how the bytes were split.
        #[test]
        fn one_byte_changed(at in 0..GOOD.len(), byte in any::<u8>(),
                            cuts in proptest::collection::vec(any::<usize>(), 0..8)) {
            let mut b = GOOD.to_vec();
            b[at] = byte;
            let lim = Limits::default();
            prop_assert_eq!(verdict_in_pieces(&b, &cuts, &lim), verdict_at_once(&b, &lim));
        }
    }
}
