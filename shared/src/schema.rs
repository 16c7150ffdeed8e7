//! The JSON Schemas of everything the fleet puts on the wire (`fleet schema
//! <kind>`, `docs/schema/`). It sits above `message` and `source` so that
//! neither needs the other's types for this.

use serde_json::Value;

use crate::message::{
    InvalidationRequest, JobCompleted, OutboundBatch, PartitionTask, RequestEvent,
};
use crate::source::SourceEvent;

/// The JSON Schema of every message kind, by name.
pub fn all() -> Vec<(&'static str, Value)> {
    let s = |schema: schemars::Schema| serde_json::to_value(schema).unwrap_or(Value::Null);
    vec![
        ("request", s(schemars::schema_for!(InvalidationRequest))),
        ("outbound", s(schemars::schema_for!(OutboundBatch))),
        ("partition-task", s(schemars::schema_for!(PartitionTask))),
        ("job-completed", s(schemars::schema_for!(JobCompleted))),
        ("request-event", s(schemars::schema_for!(RequestEvent))),
        ("source-event", s(schemars::schema_for!(SourceEvent))),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_published_schemas_are_up_to_date() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/schema");
        for (name, schema) in all() {
            let path = dir.join(format!("{name}.json"));
            let published: Value =
                serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            assert_eq!(
                published,
                schema,
                "{} is stale: regenerate with `fleet schema {name} > {}`",
                path.display(),
                path.display()
            );
        }
    }

    #[test]
    fn schemas_name_the_required_fields() {
        let all = all();
        let request = &all.iter().find(|(n, _)| *n == "request").unwrap().1;
        let required = request["required"].as_array().unwrap();
        assert!(required.iter().any(|v| v == "parameterIds"));
        assert!(!required.iter().any(|v| v == "requestId"));
        // The bounds the dispatcher enforces by default (`empty_ids`, `too_many_ids`).
        let ids = &request["properties"]["parameterIds"];
        assert_eq!(ids["minItems"], 1);
        assert_eq!(
            ids["maxItems"],
            crate::config::Config::default().dispatcher.max_ids
        );
    }
}
