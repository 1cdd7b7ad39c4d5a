//! JSON has no infinity or NaN: serde_json writes them as `null` and then cannot read them
//! back into an `f64`. Costs are infinite for infeasible parameters and errors are infinite
//! where nothing is known, so those fields go through here: non-finite ↔ `null`, and `null`
//! reads back as +∞ (the only non-finite value the sweep produces on purpose).

use serde::{Deserialize, Deserializer, Serializer};

#[allow(clippy::trivially_copy_pass_by_ref)] // serde `with` passes a reference
pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
    if v.is_finite() {
        s.serialize_f64(*v)
    } else {
        s.serialize_none()
    }
}

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::INFINITY))
}
