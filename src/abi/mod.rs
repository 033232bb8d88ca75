//! The Proxy-Wasm application binary interface: versions, enumerations and
//! wire encodings, independent of any runtime or server.

pub mod pairs;
pub mod property_path;

use std::fmt;

/// The ABI version a module declares by exporting an empty marker function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AbiVersion {
    V0_1_0,
    V0_2_0,
    V0_2_1,
}

impl AbiVersion {
    pub const ALL: [AbiVersion; 3] = [AbiVersion::V0_1_0, AbiVersion::V0_2_0, AbiVersion::V0_2_1];

    /// The export that marks a module as built for this version.
    pub fn marker(self) -> &'static str {
        match self {
            AbiVersion::V0_1_0 => "proxy_abi_version_0_1_0",
            AbiVersion::V0_2_0 => "proxy_abi_version_0_2_0",
            AbiVersion::V0_2_1 => "proxy_abi_version_0_2_1",
        }
    }

    /// Finds the version among a module's export names.
    ///
    /// `Err` carries the unknown `proxy_abi_version_*` markers seen, if any, so that
    /// the caller can tell "no marker" from "a marker we do not speak".
    pub fn detect<'a>(exports: impl IntoIterator<Item = &'a str>) -> Result<AbiVersion, Vec<String>> {
        let mut unknown = Vec::new();
        let mut found = None;
        for name in exports {
            if let Some(v) = AbiVersion::ALL.iter().find(|v| v.marker() == name) {
                // Prefer the newest marker when a module (oddly) exports several.
                found = Some(found.map_or(*v, |f: AbiVersion| f.max(*v)));
            } else if name.starts_with("proxy_abi_version_") {
                unknown.push(name.to_string());
            }
        }
        found.ok_or(unknown)
    }

    /// Header callbacks gained `end_of_stream` in 0.2.0.
    pub fn header_callbacks_have_eos(self) -> bool {
        self >= AbiVersion::V0_2_0
    }
}

impl fmt::Display for AbiVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AbiVersion::V0_1_0 => "0.1.0",
            AbiVersion::V0_2_0 => "0.2.0",
            AbiVersion::V0_2_1 => "0.2.1",
        })
    }
}

/// Status codes returned by hostcalls (`proxy_result_t`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Status {
    Ok = 0,
    NotFound = 1,
    BadArgument = 2,
    SerializationFailure = 3,
    ParseFailure = 4,
    InvalidMemoryAccess = 6,
    Empty = 7,
    CasMismatch = 8,
    InternalFailure = 10,
    Unimplemented = 12,
}

impl Status {
    pub fn code(self) -> i32 {
        self as u32 as i32
    }
}

/// Converts a raw integer argument into an ABI enumeration, or BAD_ARGUMENT.
macro_rules! abi_enum {
    ($(#[$m:meta])* $name:ident { $($variant:ident = $val:expr),* $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(i32)]
        pub enum $name { $($variant = $val),* }
        impl TryFrom<i32> for $name {
            type Error = Status;
            fn try_from(v: i32) -> Result<Self, Status> {
                match v { $($val => Ok($name::$variant),)* _ => Err(Status::BadArgument) }
            }
        }
    };
}

abi_enum!(
    /// `proxy_log_level_t`.
    LogLevel { Trace = 0, Debug = 1, Info = 2, Warn = 3, Error = 4, Critical = 5 }
);
abi_enum!(
    /// `proxy_buffer_type_t`.
    BufferType {
        HttpRequestBody = 0,
        HttpResponseBody = 1,
        DownstreamData = 2,
        UpstreamData = 3,
        HttpCallResponseBody = 4,
        GrpcReceiveBuffer = 5,
        VmConfiguration = 6,
        PluginConfiguration = 7,
        CallData = 8,
    }
);
abi_enum!(
    /// `proxy_map_type_t`.
    MapType {
        HttpRequestHeaders = 0,
        HttpRequestTrailers = 1,
        HttpResponseHeaders = 2,
        HttpResponseTrailers = 3,
        GrpcReceiveInitialMetadata = 4,
        GrpcReceiveTrailingMetadata = 5,
        HttpCallResponseHeaders = 6,
        HttpCallResponseTrailers = 7,
    }
);
abi_enum!(
    /// `proxy_stream_type_t`.
    StreamType { HttpRequest = 0, HttpResponse = 1, Downstream = 2, Upstream = 3 }
);
abi_enum!(
    /// `proxy_metric_type_t`.
    MetricType { Counter = 0, Gauge = 1, Histogram = 2 }
);

/// What a stream callback asks of the server (`proxy_action_t`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Continue,
    Pause,
}

impl Action {
    /// Unknown values are treated as Continue, as Envoy does, rather than stalling a stream.
    pub fn from_raw(v: i32) -> Action {
        if v == 1 {
            Action::Pause
        } else {
            Action::Continue
        }
    }
}

impl LogLevel {
    pub fn name(self) -> &'static str {
        match self {
            LogLevel::Trace => "trace",
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
            LogLevel::Critical => "critical",
        }
    }
}
