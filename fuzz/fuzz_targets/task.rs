//! The partition-task decoder (`PartitionTask::decode`, what the partition
//! worker runs first on every body) and the query a decoded task becomes.
//!
//! Invariants: no panic; a refusal has one of the documented classes; a
//! decoded task re-encodes to itself; its query builds and serialises, and
//! names the task's range exactly (the first range open below, documents
//! without `searchPartition` included).

#![no_main]

use fleet_shared::message::PartitionTask;
use fleet_shared::search::{terms_query, with_partition_range};
use libfuzzer_sys::fuzz_target;

use fleet_shared::message::DECODE_CLASSES as CLASSES;

fuzz_target!(|body: &[u8]| {
    match PartitionTask::decode(body) {
        Ok(t) => {
            let encoded = serde_json::to_vec(&t).expect("a task serialises");
            assert_eq!(
                PartitionTask::decode(&encoded).expect("re-encoded task decodes"),
                t
            );
            for nested in [None, Some("listings")] {
                let terms = terms_query(&t.parameter_name, &t.parameter_ids, nested);
                let q = with_partition_range(&terms, t.partition_from, t.partition_to);
                let text = serde_json::to_string(&q).expect("a query serialises");
                match (t.partition_from, t.partition_to) {
                    // No range: the query itself, unwrapped. (Checked by
                    // structure, not by text: a field name may contain
                    // "searchPartition".)
                    (None, None) => assert_eq!(q, terms, "{text}"),
                    // The first range: everything below `to`, documents
                    // without the field included (a must_not from `to` up).
                    (None, Some(to)) => {
                        let not = &q["bool"]["must_not"][0]["range"]["searchPartition"];
                        assert_eq!(not["gte"], to, "{text}");
                    }
                    (Some(from), to) => {
                        let range = &q["bool"]["filter"][1]["range"]["searchPartition"];
                        assert_eq!(range["gte"], from, "{text}");
                        match to {
                            Some(to) => assert_eq!(range["lt"], to, "{text}"),
                            None => assert!(range.get("lt").is_none(), "{text}"),
                        }
                    }
                }
            }
        }
        Err(e) => {
            assert!(
                CLASSES.contains(&e.class()),
                "undocumented class {}",
                e.class()
            );
            let _ = e.to_string();
        }
    }
});
