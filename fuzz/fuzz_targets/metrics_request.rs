//! Any request, in pieces of any size, through the metrics server's request handling
//! (`tunfwd::fuzzing::fuzz_request`): what any client that can reach `--metrics` sends. No
//! panic; the head kept stays bounded, and every answer is a whole HTTP/1.1 response, a scrape's
//! rendered only for `GET /metrics`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    tunfwd::fuzzing::fuzz_request(input);
});
