//! Everything Braze: its instance table, the partner cohort import client, and the mapping of
//! Currents events back into stored events.

pub mod client;
pub mod currents;
pub mod currents_avro;
pub mod instances;
pub mod users_track;
