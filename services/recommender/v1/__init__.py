"""The contract of proto/recommender/v1/recommender.proto: its stubs (generated, beside this file), the service's
full name, and which of its RPCs change state (they need the admin credential once one is configured: the gRPC
interceptor and the OpenAPI document's security both read it). Nothing here imports the stubs, so that the package
build can read it before they exist."""

SERVICE_NAME = "recommender.v1.Recommender"  # a test holds it equal to the descriptor's

STATE_CHANGING = frozenset(
    {
        "Retrain",
        "Rollback",
        "RecordInteractions",
        "UpsertBooks",
        "RecordFeedback",
        "StartCanary",
        "PromoteCanary",
        "AbortCanary",
        "DeleteUser",
        "DeleteBook",
    }
)

# The answer to a call in STATE_CHANGING without a credential, over gRPC and (before its body is read) over HTTP.
MISSING_CREDENTIALS = (
    "missing credentials: this call needs the admin key or a token, as 'Authorization: Bearer <key>' "
    "or 'x-api-key: <key>'"
)
