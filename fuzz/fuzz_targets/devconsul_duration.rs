//! The dev Consul's Go duration parser (`devconsul::duration`): never a panic; an accepted string
//! means the same as its Go-printed form, and an error quotes the input it refused.
#![no_main]

use devconsul::duration::{format_go_duration, parse_go_duration, DurationError};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|s: &str| {
    match parse_go_duration(s) {
        Ok(n) => assert_eq!(parse_go_duration(&format_go_duration(n)), Ok(n), "{s:?}"),
        Err(DurationError::Invalid(i) | DurationError::MissingUnit(i)) => assert_eq!(i, s),
        Err(DurationError::UnknownUnit { input, unit }) => {
            assert_eq!(input, s);
            assert!(!unit.is_empty() && s.contains(&unit));
        }
    }
});
