//! Cross-origin access to the ingestion endpoints. `mixpanel-browser` runs on the customer's
//! site and posts to this server from that origin with `withCredentials` set, so replies to
//! `/track`, `/engage` and `/groups` echo the request's `Origin` and allow credentials, and
//! preflight requests get a reply. No cookie authenticates these endpoints (the web UI's
//! session cookie is scoped to `/ui`), so any origin may send. `/import`, which takes HTTP
//! Basic credentials, allows any origin but never with credentials.

use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

fn add_headers(headers: &mut HeaderMap, origin: Option<HeaderValue>) {
    match origin {
        Some(origin) => {
            headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
            headers.append(header::VARY, HeaderValue::from_static("Origin"));
        }
        None => {
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_ORIGIN,
                HeaderValue::from_static("*"),
            );
        }
    }
}

pub async fn allow_any_origin(request: Request, next: Next) -> Response {
    let path = request.uri().path().trim_end_matches('/');
    let with_credentials = !path.ends_with("/import");
    let origin = request
        .headers()
        .get(header::ORIGIN)
        .cloned()
        .filter(|_| with_credentials);
    if request.method() == Method::OPTIONS {
        let mut response = StatusCode::NO_CONTENT.into_response();
        let headers = response.headers_mut();
        add_headers(headers, origin);
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST, OPTIONS"),
        );
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static(
                "content-type, content-encoding, authorization, x-requested-with",
            ),
        );
        headers.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("86400"),
        );
        return response;
    }
    let mut response = next.run(request).await;
    add_headers(response.headers_mut(), origin);
    response
}
