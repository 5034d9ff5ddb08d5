//! Durable segmented log store (placeholder).
