//! [`ApiError`]: every failure of an API handler, mapped to an HTTP status and an
//! [`ErrorBody`] in this one place.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use strata_api_types::ErrorBody;
use strata_meta::{CommandError, MetaError};
use strata_store::StoreError;

/// A failed API request: the status and the one-line reason the client shows.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// What happened and what to do.
    pub message: String,
}

impl ApiError {
    /// 400: the request itself is wrong.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }

    /// 404: the named thing does not exist.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            message: message.into(),
        }
    }

    /// 409: the request conflicts with the current state.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::CONFLICT,
            message: message.into(),
        }
    }

    /// 503: the management group cannot serve this now; retry later.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: message.into(),
        }
    }

    /// 500: something broke on the server.
    pub fn internal(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(ErrorBody {
                error: self.message,
            }),
        )
            .into_response()
    }
}

impl From<MetaError> for ApiError {
    fn from(e: MetaError) -> Self {
        match e {
            MetaError::Refused(c) => c.into(),
            other => Self {
                status: StatusCode::SERVICE_UNAVAILABLE,
                message: other.to_string(),
            },
        }
    }
}

impl From<CommandError> for ApiError {
    fn from(e: CommandError) -> Self {
        Self {
            status: command_status(&e),
            message: e.to_string(),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let status = match e {
            StoreError::NoSpace => StatusCode::INSUFFICIENT_STORAGE,
            StoreError::FileTooLarge { .. } => StatusCode::BAD_REQUEST,
            StoreError::OutOfRange { .. } | StoreError::Shrink { .. } => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self {
            status,
            message: e.to_string(),
        }
    }
}

/// Exhaustive on purpose: a new refusal must be given its status here, not fall into a default.
fn command_status(e: &CommandError) -> StatusCode {
    use CommandError as C;
    match e {
        C::ServerIdExists(_)
        | C::ServerNameExists(_)
        | C::RaftNodeIdExists(_)
        | C::ClusterExists(_)
        | C::ServerInCluster { .. }
        | C::ServerHoldsData { .. }
        | C::TooFewServers { .. }
        | C::NotMigrating { .. }
        | C::AlreadyLeaving { .. }
        | C::ReporterStale { .. }
        | C::NoReplicaLeft { .. }
        | C::EpochMoved { .. }
        | C::VolumeExists(_)
        | C::VolumeIdExists(_)
        | C::LayerInUse(_)
        | C::SnapshotExists { .. }
        | C::StaleHead { .. }
        | C::JobExists(_)
        | C::JobEnded { .. }
        | C::JobBusy { .. } => StatusCode::CONFLICT,
        C::UnknownServer(_)
        | C::UnknownCluster(_)
        | C::UnknownVolume(_)
        | C::UnknownVolumeId(_)
        | C::UnknownSnapshot { .. }
        | C::UnknownJob(_) => StatusCode::NOT_FOUND,
        C::MissingAddress { .. }
        | C::EmptyCluster(_)
        | C::NotInCluster { .. }
        | C::BadSize { .. }
        | C::Shrink { .. }
        | C::NotInLayout { .. }
        | C::BadReplicas { .. }
        | C::BadJobState(_) => StatusCode::BAD_REQUEST,
    }
}
