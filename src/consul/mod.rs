//! Typed Consul HTTP client (placeholder until the client lands).
