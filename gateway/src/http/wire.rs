//! Bodies in either protobuf or JSON, for the endpoints agents use.
//!
//! The request's `Content-Type` picks the decoder (`application/x-protobuf` or
//! `application/json`; JSON when absent), its `Accept` header the encoder of the answer
//! (protobuf only when asked for). Both forms carry the same `logbook_proto` message.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use logbook_proto::PROTOBUF_MEDIA_TYPE;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::AppState;
use super::error::ApiError;

/// The encoding of a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Format {
    /// `application/x-protobuf`.
    Protobuf,
    /// `application/json`.
    Json,
}

fn is_protobuf(value: Option<&HeaderValue>) -> bool {
    value.and_then(|v| v.to_str().ok()).is_some_and(|v| {
        v.split(',')
            .any(|part| part.trim().starts_with(PROTOBUF_MEDIA_TYPE))
    })
}

impl Format {
    /// The format the caller wants answers in.
    pub(super) fn accepted(headers: &HeaderMap) -> Self {
        if is_protobuf(headers.get(header::ACCEPT)) {
            Format::Protobuf
        } else {
            Format::Json
        }
    }
}

/// A request body decoded from protobuf or JSON, and the format to answer in.
#[derive(Debug)]
pub(super) struct Wire<T> {
    /// The message.
    pub(super) message: T,
    /// How to encode the answer.
    pub(super) reply_as: Format,
}

impl<T> FromRequest<AppState> for Wire<T>
where
    T: prost::Message + DeserializeOwned + Default,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let reply_as = Format::accepted(request.headers());
        let content_type = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                v.split(';')
                    .next()
                    .unwrap_or_default()
                    .trim()
                    .to_ascii_lowercase()
            });
        let format = match content_type.as_deref() {
            None | Some("application/json") => Format::Json,
            Some(PROTOBUF_MEDIA_TYPE) => Format::Protobuf,
            Some(other) => {
                return Err(ApiError::UnsupportedMediaType(format!(
                    "content type {other:?} is not accepted; send application/json or {PROTOBUF_MEDIA_TYPE}"
                )));
            }
        };
        let limit = state.max_body_bytes();
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(|rejection| {
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::PayloadTooLarge { limit }
                } else {
                    ApiError::invalid_field("body", rejection.body_text())
                }
            })?;
        let message = match format {
            Format::Protobuf => T::decode(bytes).map_err(|e| {
                ApiError::invalid_field("body", format!("is not a valid protobuf message: {e}"))
            })?,
            Format::Json => serde_json::from_slice(&bytes).map_err(|e| {
                ApiError::invalid_field("body", format!("is not valid JSON for this message: {e}"))
            })?,
        };
        Ok(Wire { message, reply_as })
    }
}

/// An answer in the format the caller asked for.
#[derive(Debug)]
pub(super) struct Reply<T> {
    /// The status.
    pub(super) status: StatusCode,
    /// The encoding.
    pub(super) format: Format,
    /// The message.
    pub(super) message: T,
}

impl<T: prost::Message + Serialize> IntoResponse for Reply<T> {
    fn into_response(self) -> Response {
        match self.format {
            Format::Protobuf => (
                self.status,
                [(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static(PROTOBUF_MEDIA_TYPE),
                )],
                self.message.encode_to_vec(),
            )
                .into_response(),
            Format::Json => (self.status, axum::Json(self.message)).into_response(),
        }
    }
}

/// A JSON request body whose rejections are API errors (a JSON body naming the problem).
#[derive(Debug)]
pub(super) struct JsonBody<T>(pub(super) T);

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let limit = state.max_body_bytes();
        match axum::Json::<T>::from_request(request, state).await {
            Ok(axum::Json(value)) => Ok(JsonBody(value)),
            Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Err(ApiError::PayloadTooLarge { limit })
            }
            Err(rejection) if rejection.status() == StatusCode::UNSUPPORTED_MEDIA_TYPE => {
                Err(ApiError::UnsupportedMediaType(rejection.body_text()))
            }
            Err(rejection) => Err(ApiError::invalid_field("body", rejection.body_text())),
        }
    }
}

/// Query parameters whose rejections are API errors.
#[derive(Debug)]
pub(super) struct QueryParams<T>(pub(super) T);

impl<S: Send + Sync, T: DeserializeOwned> axum::extract::FromRequestParts<S> for QueryParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| QueryParams(q.0))
            .map_err(|rejection| ApiError::invalid_field("query", rejection.body_text()))
    }
}
