//! JSON responses with exactly `Content-Type: application/json` and a Content-Length.

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;

/// Builds a JSON response from any serialisable value.
pub fn json_response<T: serde::Serialize + ?Sized>(status: StatusCode, value: &T) -> Response {
    let bytes = serde_json::to_vec(value)
        .unwrap_or_else(|_| b"{\"msg\":\"Internal server error\"}".to_vec());
    json_bytes_response(status, bytes)
}

/// Builds a JSON response from JSON text the caller wrote.
pub fn json_bytes_response(status: StatusCode, bytes: Vec<u8>) -> Response {
    let len = bytes.len();
    let mut resp = Response::new(Body::from(bytes));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    resp
}

/// 200 with a JSON body.
pub fn ok(value: serde_json::Value) -> Response {
    json_response(StatusCode::OK, &value)
}

/// 200 `{"msg": msg}`.
pub fn ok_msg(msg: &str) -> Response {
    ok(serde_json::json!({ "msg": msg }))
}
