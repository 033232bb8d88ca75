use std::ptr;

use crate::abi::pairs;
use crate::abi::{LogLevel, MapType, Status, StreamType};

use super::*;

#[test]
fn enums_match_the_abi() {
    for (c, s) in [
        (pwh_status::Ok, Status::Ok),
        (pwh_status::NotFound, Status::NotFound),
        (pwh_status::BadArgument, Status::BadArgument),
        (pwh_status::SerializationFailure, Status::SerializationFailure),
        (pwh_status::ParseFailure, Status::ParseFailure),
        (pwh_status::InvalidMemoryAccess, Status::InvalidMemoryAccess),
        (pwh_status::Empty, Status::Empty),
        (pwh_status::CasMismatch, Status::CasMismatch),
        (pwh_status::InternalFailure, Status::InternalFailure),
        (pwh_status::Unimplemented, Status::Unimplemented),
    ] {
        assert_eq!(c as i32, s.code());
        assert_eq!(status_from_code(c as i32), s);
    }
    for (c, l) in [
        (pwh_log_level::Trace, LogLevel::Trace),
        (pwh_log_level::Debug, LogLevel::Debug),
        (pwh_log_level::Info, LogLevel::Info),
        (pwh_log_level::Warn, LogLevel::Warn),
        (pwh_log_level::Error, LogLevel::Error),
        (pwh_log_level::Critical, LogLevel::Critical),
    ] {
        assert_eq!(c as i32, l as i32);
    }
    for (c, m) in [
        (pwh_map_type::HttpRequestHeaders, MapType::HttpRequestHeaders),
        (pwh_map_type::HttpRequestTrailers, MapType::HttpRequestTrailers),
        (pwh_map_type::HttpResponseHeaders, MapType::HttpResponseHeaders),
        (pwh_map_type::HttpResponseTrailers, MapType::HttpResponseTrailers),
        (pwh_map_type::GrpcReceiveInitialMetadata, MapType::GrpcReceiveInitialMetadata),
        (pwh_map_type::GrpcReceiveTrailingMetadata, MapType::GrpcReceiveTrailingMetadata),
        (pwh_map_type::HttpCallResponseHeaders, MapType::HttpCallResponseHeaders),
        (pwh_map_type::HttpCallResponseTrailers, MapType::HttpCallResponseTrailers),
    ] {
        assert_eq!(c as i32, m as i32);
    }
    for (c, s) in [
        (pwh_stream_type::HttpRequest, StreamType::HttpRequest),
        (pwh_stream_type::HttpResponse, StreamType::HttpResponse),
        (pwh_stream_type::Downstream, StreamType::Downstream),
        (pwh_stream_type::Upstream, StreamType::Upstream),
    ] {
        assert_eq!(c as i32, s as i32);
    }
}

#[test]
fn pairs_helpers_agree_with_the_codec() {
    let buf = pwh_buffer_new();
    for (k, v) in [(":path", "/a"), ("x", ""), ("", "v")] {
        // SAFETY: a live buffer and byte views of live strings.
        let st = unsafe { pwh_pairs_add(buf, pwh_bytes::of(k.as_bytes()), pwh_bytes::of(v.as_bytes())) };
        assert_eq!(st, 0);
    }
    // SAFETY: `buf` is live and not used elsewhere.
    let bytes = unsafe { &(*buf).bytes }.clone();
    assert_eq!(pairs::decode(&bytes).unwrap(), pairs::decode_unlimited(&bytes).unwrap());
    // SAFETY: a byte view of a live vector.
    assert_eq!(unsafe { pwh_pairs_count(pwh_bytes::of(&bytes)) }, 3);
    let (mut k, mut v) = (pwh_bytes::EMPTY, pwh_bytes::EMPTY);
    // SAFETY: a byte view of a live vector and writable out-parameters.
    let st = unsafe { pwh_pairs_get(pwh_bytes::of(&bytes), 0, &mut k, &mut v) };
    assert_eq!(st, 0);
    // SAFETY: point into `bytes`, still alive.
    let pair = unsafe { (k.as_slice().unwrap(), v.as_slice().unwrap()) };
    assert_eq!(pair, (&b":path"[..], &b"/a"[..]));
    // SAFETY: as above.
    let st = unsafe { pwh_pairs_get(pwh_bytes::of(&bytes), 3, &mut k, &mut v) };
    assert_eq!(st, 1);
    let truncated = &bytes[..bytes.len() - 1];
    // SAFETY: a byte view of a live slice.
    let count = unsafe { pwh_pairs_count(pwh_bytes::of(truncated)) };
    assert_eq!(count, -1);
    // SAFETY: from pwh_buffer_new, freed once.
    unsafe { pwh_buffer_free(buf) };
}

#[test]
fn null_arguments_are_errors_not_crashes() {
    let err = pwh_buffer_new();
    // SAFETY: NULL handles are allowed; `err` is live.
    unsafe {
        assert_eq!(pwh_on_tick(ptr::null_mut(), 0, err), -1);
        assert_eq!(pwh_buffer_len(err), "vms is NULL".len());
        assert!(pwh_plugins_load(ptr::null(), 1, err).is_null());
        assert_eq!(pwh_stream_create(ptr::null_mut(), 0, ptr::null(), err), 0);
        assert_eq!(pwh_buffer_set(ptr::null_mut(), ptr::null(), 0), pwh_status::BadArgument as i32);
        pwh_vms_free(ptr::null_mut());
        pwh_buffer_free(err);
    }
}
