//! Authorize, keygate's own typed authorization call.

use keygate::proto::authorizer_client::AuthorizerClient;
use keygate::proto::{AuthorizeRequest, AuthorizeResponse};
use tonic::IntoRequest;
use tonic::transport::Channel;

/// Authorize's answer to `request` on `data_plane`, or the call's error status.
pub async fn try_authorize(
    data_plane: &Channel,
    request: impl IntoRequest<AuthorizeRequest>,
) -> Result<AuthorizeResponse, tonic::Status> {
    AuthorizerClient::new(data_plane.clone())
        .authorize(request)
        .await
        .map(tonic::Response::into_inner)
}

/// Authorize's answer to `request` on `data_plane`; the call must succeed.
pub async fn authorize(
    data_plane: &Channel,
    request: impl IntoRequest<AuthorizeRequest>,
) -> AuthorizeResponse {
    try_authorize(data_plane, request).await.unwrap()
}
