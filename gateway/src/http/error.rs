//! The one error type of the HTTP API.
//!
//! Every failure becomes a JSON body `{"error": {"code", "message", "details"}}` with the status
//! that says what the caller can do about it: fix the request (400/413/415/422), authenticate
//! (401), stop asking for something it cannot see (404), reconcile (409), or retry later (503).
//! Anything else is a 500 with an opaque body; the full error chain is logged once, here.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use logbook_domain::checkin::FieldProblem;
use serde::Serialize;
use utoipa::ToSchema;

use crate::commands::CommandError;
use crate::store::StoreError;

/// An API failure.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed or breaks a rule; `details` names each offending field.
    #[error("{message}")]
    Invalid {
        /// Summary.
        message: String,
        /// One entry per offending field.
        details: Vec<FieldProblem>,
    },
    /// Missing or wrong credentials.
    #[error("{0}")]
    Unauthorized(String),
    /// No such resource (or not one the caller may see).
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with the current state.
    #[error("{0}")]
    Conflict(String),
    /// The body is larger than allowed.
    #[error("request body is larger than {limit} bytes")]
    PayloadTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The body's media type is not accepted.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// A dependency is down or saturated; retry later.
    #[error("{0}")]
    Unavailable(String),
    /// A bug or an unexpected failure.
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl ApiError {
    /// A 400 about one field.
    pub fn invalid_field(field: &str, problem: impl Into<String>) -> Self {
        let problem = problem.into();
        ApiError::Invalid {
            message: format!("{field} {problem}"),
            details: vec![FieldProblem {
                field: field.to_string(),
                problem,
            }],
        }
    }

    /// A 400 listing several fields.
    pub fn invalid_fields(message: impl Into<String>, details: Vec<FieldProblem>) -> Self {
        ApiError::Invalid {
            message: message.into(),
            details,
        }
    }

    /// A 500 from any error.
    pub fn internal(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        ApiError::Internal(Box::new(e))
    }

    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::Invalid { .. } => (StatusCode::BAD_REQUEST, "invalid_request"),
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ApiError::PayloadTooLarge { .. } => {
                (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
            }
            ApiError::UnsupportedMediaType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

/// The JSON error body.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Machine-readable kind: `invalid_request`, `unauthorized`, `not_found`, `conflict`,
    /// `payload_too_large`, `unsupported_media_type`, `unavailable`, `internal`.
    pub code: String,
    /// Human-readable explanation.
    pub message: String,
    /// For `invalid_request`: each offending field.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<FieldDetail>,
}

/// One offending field.
#[derive(Debug, Serialize, ToSchema)]
pub struct FieldDetail {
    /// The field's path, such as `report.disks[0].used_bytes`.
    pub field: String,
    /// What is wrong with it.
    pub problem: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let message = match &self {
            ApiError::Internal(source) => {
                tracing::error!(error = %crate::telemetry::chain(source.as_ref()), "request failed");
                "internal error".to_string()
            }
            other => other.to_string(),
        };
        let details = match self {
            ApiError::Invalid { details, .. } => details
                .into_iter()
                .map(|d| FieldDetail {
                    field: d.field,
                    problem: d.problem,
                })
                .collect(),
            _ => Vec::new(),
        };
        let mut response = (
            status,
            Json(ErrorBody {
                error: ErrorDetail {
                    code: code.to_string(),
                    message,
                    details,
                },
            }),
        )
            .into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(_) => {
                ApiError::Unavailable("the database is unavailable; retry later".into())
            }
            StoreError::Conflict { .. } => ApiError::Conflict(format!("{e}; retry")),
            other => ApiError::internal(other),
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        StoreError::from(e).into()
    }
}

impl From<CommandError> for ApiError {
    fn from(e: CommandError) -> Self {
        match e {
            CommandError::Invalid {
                field: Some(field),
                message,
            } => ApiError::Invalid {
                details: vec![FieldProblem {
                    field: field.to_string(),
                    problem: message.clone(),
                }],
                message,
            },
            CommandError::Invalid {
                field: None,
                message,
            } => ApiError::Invalid {
                message,
                details: Vec::new(),
            },
            CommandError::NotFound(m) => ApiError::NotFound(m),
            CommandError::Conflict(m) => ApiError::Conflict(m),
            CommandError::Unauthorized(m) => ApiError::Unauthorized(m),
            CommandError::Store(e) => e.into(),
        }
    }
}
