//! What the dataset tests share.

/// A dataset with an integer subject id, a bounded amount and an
/// identifying label.
pub const SCHEMA: &str = r#"
[[columns]]
name = "id"
class = "subject_id"
type = "integer"
[[columns]]
name = "amount"
class = "attribute"
type = "integer"
bounds = [0, 1000000]
[[columns]]
name = "label"
class = "identifier"
type = "string"
"#;
