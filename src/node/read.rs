//! The read path: `GET /api/v1/log?from=OFFSET&limit=N` over the local log. Messages are JSON
//! strings when they are UTF-8, base64 otherwise.

use axum::{
    extract::{RawQuery, State},
    Json,
};
use base64::{engine::general_purpose::STANDARD, Engine};
use serde::Serialize;

use super::{ApiError, Node};
use crate::log::Record;

/// Default number of entries per read.
const DEFAULT_LIMIT: usize = 100;
/// Most entries one read returns.
const MAX_LIMIT: usize = 10_000;
/// Most payload bytes one read returns.
const MAX_READ_BYTES: usize = 8 << 20;

/// One entry of a read.
#[derive(Debug, Serialize)]
pub struct Entry {
    /// Its offset.
    pub offset: u64,
    /// The term of the leader that stored it.
    pub term: u64,
    /// When it was stored (ms since the epoch).
    pub timestamp_ms: u64,
    /// The message, when it is UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The message in base64, when it is not UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_base64: Option<String>,
}

impl From<Record> for Entry {
    fn from(r: Record) -> Self {
        let (message, message_base64) = match String::from_utf8(r.payload.to_vec()) {
            Ok(s) => (Some(s), None),
            Err(_) => (None, Some(STANDARD.encode(&r.payload))),
        };
        Entry {
            offset: r.offset,
            term: r.term,
            timestamp_ms: r.timestamp_ms,
            message,
            message_base64,
        }
    }
}

/// The answer to a read.
#[derive(Debug, Serialize)]
pub struct ReadAnswer {
    /// The entries, in offset order.
    pub entries: Vec<Entry>,
    /// The offset to read from next.
    pub next: u64,
    /// The end of what this node lets readers see (its high watermark) when the read was served.
    pub end_offset: u64,
}

/// `from` and `limit` of a read.
#[derive(Debug, PartialEq, Eq)]
pub struct ReadParams {
    /// First offset wanted (`None`: the oldest retained).
    pub from: Option<u64>,
    /// How many entries at most.
    pub limit: usize,
}

/// Parses the query string; unknown parameters and bad numbers are errors naming the parameter.
pub fn parse_read_params(query: Option<&str>) -> Result<ReadParams, ApiError> {
    let mut params = ReadParams {
        from: None,
        limit: DEFAULT_LIMIT,
    };
    for (key, value) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        let number = |name: &str| {
            value.parse::<u64>().map_err(|_| {
                ApiError::BadRequest(format!(
                    "query parameter {name} must be an unsigned integer, got {value:?}"
                ))
            })
        };
        match key.as_ref() {
            "from" => params.from = Some(number("from")?),
            "limit" => {
                let limit = number("limit")?;
                if limit == 0 || limit > MAX_LIMIT as u64 {
                    return Err(ApiError::BadRequest(format!(
                        "query parameter limit must be 1 to {MAX_LIMIT}"
                    )));
                }
                params.limit = limit as usize;
            }
            // The read token for clients that cannot set headers; checked by the auth layer.
            super::auth::ACCESS_TOKEN_PARAM => {}
            other => return Err(ApiError::BadRequest(format!("unknown query parameter {other:?}"))),
        }
    }
    Ok(params)
}

/// `GET /api/v1/log`.
pub async fn read(State(node): State<Node>, RawQuery(query): RawQuery) -> Result<Json<ReadAnswer>, ApiError> {
    let params = parse_read_params(query.as_deref())?;
    let from = params.from.unwrap_or_else(|| node.store.start_offset());
    // The high watermark before the read: the answer never claims more than the read could see.
    let end = node.store.high_watermark();
    let records = node.store.read(from, params.limit, MAX_READ_BYTES).await?;
    // No record: nothing readable between `from` and the HW (at most control records, which
    // reads skip), so the next read starts at the HW.
    let next = records.last().map_or(from.max(end), |r| r.offset + 1);
    Ok(Json(ReadAnswer {
        entries: records.into_iter().map(Entry::from).collect(),
        next,
        end_offset: end.max(next),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Defaults, bounds and unknown parameters of a read.
    #[test]
    fn params() {
        assert_eq!(
            parse_read_params(None).unwrap(),
            ReadParams {
                from: None,
                limit: DEFAULT_LIMIT
            }
        );
        assert_eq!(
            parse_read_params(Some("from=5&limit=2")).unwrap(),
            ReadParams {
                from: Some(5),
                limit: 2
            }
        );
        assert!(parse_read_params(Some("from=-1")).is_err());
        assert!(parse_read_params(Some("limit=0")).is_err());
        assert!(parse_read_params(Some("limit=99999999")).is_err());
        assert!(parse_read_params(Some("color=red")).is_err());
    }
}
