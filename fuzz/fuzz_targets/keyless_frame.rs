//! Feeds arbitrary bytes to the keyless frame splitter and decoders, the
//! way a connection's read buffer would. Any panic is a bug; anything that
//! decodes must survive encode and decode unchanged (after one round, which
//! settles representation choices such as IPv4-mapped addresses).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sigmux::keyless::protocol::{HEADER_LEN, Request, Response, split_frame};

fuzz_target!(|data: &[u8]| {
    let mut buf = data;
    while let Ok(Some((header, len))) = split_frame(buf) {
        let body = &buf[HEADER_LEN..len];
        if let Ok(req) = Request::decode(&header, body)
            && let Ok(frame) = req.encode()
        {
            let (h, _) = split_frame(&frame).unwrap().unwrap();
            let once = Request::decode(&h, &frame[HEADER_LEN..]).unwrap();
            let again = once.encode().unwrap();
            let (h2, _) = split_frame(&again).unwrap().unwrap();
            assert_eq!(Request::decode(&h2, &again[HEADER_LEN..]).unwrap(), once);
        }
        let _ = Response::decode(&header, body);
        buf = &buf[len..];
    }
});
