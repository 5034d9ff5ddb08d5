//! Embedded Consul-compatible dev server (placeholder).
