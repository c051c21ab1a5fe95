"""Names of the Tokenbridge API (group tokenbridge.dev/v1alpha1) and of the OAuth URNs it speaks.

Everything that the CRDs, the operator and the exchange server must spell the same way is defined here once.
"""

GROUP = "tokenbridge.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

KIND_IDP = "IdentityProvider"
KIND_CLUSTER_IDP = "ClusterIdentityProvider"
KIND_APP = "OAuthApplication"

PLURAL_IDP = "identityproviders"
PLURAL_CLUSTER_IDP = "clusteridentityproviders"
PLURAL_APP = "oauthapplications"

# IdentityProvider spec.type values
IDP_OIDC = "OIDC"
IDP_OKTA = "Okta"
IDP_ENTRA = "MicrosoftEntraID"
IDP_AUTH0 = "Auth0"
IDP_KUBERNETES = "Kubernetes"
IDP_TYPES = (IDP_OIDC, IDP_OKTA, IDP_ENTRA, IDP_AUTH0, IDP_KUBERNETES)

# Grant types (RFC 6749, RFC 7523, RFC 8693)
GRANT_TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
GRANT_JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
GRANT_CLIENT_CREDENTIALS = "client_credentials"
GRANT_TYPES = (GRANT_TOKEN_EXCHANGE, GRANT_JWT_BEARER, GRANT_CLIENT_CREDENTIALS)

# Token type identifiers (RFC 8693 §3)
TOKEN_TYPE_JWT = "urn:ietf:params:oauth:token-type:jwt"
TOKEN_TYPE_ID_TOKEN = "urn:ietf:params:oauth:token-type:id_token"
TOKEN_TYPE_ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token"

AUTH_METHOD_BASIC = "client_secret_basic"
AUTH_METHOD_POST = "client_secret_post"

# Only asymmetric JWS algorithms are ever accepted (RFC 8725 §3.1); the default is the RS256/ES256 family.
ASYMMETRIC_ALGORITHMS = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
)
DEFAULT_ALLOWED_ALGORITHMS = ("RS256", "RS384", "RS512", "ES256", "ES384", "ES512")

# Annotations and labels
ANNOTATION_ROTATE_SECRET = f"{GROUP}/rotate-secret"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY = "tokenbridge"

# Condition types
COND_READY = "Ready"
COND_DISCOVERED = "Discovered"
COND_KEYS_AVAILABLE = "KeysAvailable"
COND_CREDENTIALS_READY = "CredentialsReady"
COND_REFERENCES_RESOLVED = "ReferencesResolved"
