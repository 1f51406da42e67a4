//! dtable-proxy: routes each request to the server owning its base's bucket (not built yet).
