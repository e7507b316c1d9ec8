//! Exact vector distance functions, usable without any index:
//! `vec_distance` (L2), `l2_distance_squared`, `inner_product`, `cosine_distance`.
//!
//! Arguments: `FixedSizeList` / `List` / `LargeList` of numbers, an array literal, or a
//! string `'[0.1, ...]'`. A NULL vector, or one with a NULL element, gives NULL; so does
//! `cosine_distance` of a zero vector. Vectors of different dimension are an error naming
//! both dimensions and the row. Results are Float64, computed as DataFusion computes its
//! `inner_product`, `cosine_distance` and `array_distance`: elements as f64, summed in
//! order, so ours give DataFusion's values to the last bit.

mod vectors;

use std::sync::Arc;

use datafusion::arrow::array::Float64Array;
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{exec_err, plan_err, Result};
use datafusion::logical_expr::{ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility};

use vectors::{Vector, Vectors};

/// Which distance a function computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Distance {
    /// Euclidean distance, `vec_distance`.
    L2,
    /// Squared Euclidean distance (FAISS's L2), `l2_distance_squared`.
    L2Squared,
    /// Dot product, `inner_product`: larger is closer.
    InnerProduct,
    /// `1 - cos(a, b)`, `cosine_distance`.
    Cosine,
}

impl Distance {
    pub const ALL: [Distance; 4] = [Distance::L2, Distance::L2Squared, Distance::InnerProduct, Distance::Cosine];

    pub fn name(self) -> &'static str {
        match self {
            Distance::L2 => "vec_distance",
            Distance::L2Squared => "l2_distance_squared",
            Distance::InnerProduct => "inner_product",
            Distance::Cosine => "cosine_distance",
        }
    }

    fn eval(self, a: Vector, b: Vector) -> Option<f64> {
        match (a, b) {
            (Vector::F32(a), Vector::F32(b)) => self.eval_as(a, b),
            (Vector::F32(a), Vector::F64(b)) => self.eval_as(a, b),
            (Vector::F64(a), Vector::F32(b)) => self.eval_as(a, b),
            (Vector::F64(a), Vector::F64(b)) => self.eval_as(a, b),
        }
    }

    fn eval_as<A: Copy + Into<f64>, B: Copy + Into<f64>>(self, a: &[A], b: &[B]) -> Option<f64> {
        let (mut dot, mut aa, mut bb, mut l2) = (0f64, 0f64, 0f64, 0f64);
        for (&x, &y) in a.iter().zip(b) {
            let (x, y): (f64, f64) = (x.into(), y.into());
            match self {
                Distance::L2 | Distance::L2Squared => l2 += (x - y) * (x - y),
                Distance::InnerProduct => dot += x * y,
                Distance::Cosine => {
                    dot += x * y;
                    aa += x * x;
                    bb += y * y;
                }
            }
        }
        match self {
            Distance::L2 => Some(l2.sqrt()),
            Distance::L2Squared => Some(l2),
            Distance::InnerProduct => Some(dot),
            Distance::Cosine if aa == 0.0 || bb == 0.0 => None,
            Distance::Cosine => Some(1.0 - dot / (aa.sqrt() * bb.sqrt())),
        }
    }
}

/// The scalar UDF of one [`Distance`].
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct DistanceUdf {
    distance: Distance,
    signature: Signature,
    aliases: Vec<String>,
}

impl DistanceUdf {
    pub fn new(distance: Distance) -> Self {
        // DataFusion's `inner_product` answers to `dot_product` too; ours replaces both.
        let aliases = match distance {
            Distance::InnerProduct => vec!["dot_product".to_string()],
            _ => vec![],
        };
        DistanceUdf { distance, signature: Signature::any(2, Volatility::Immutable), aliases }
    }

    pub fn distance(&self) -> Distance {
        self.distance
    }
}

/// All four functions.
pub fn all() -> Vec<Arc<ScalarUDF>> {
    Distance::ALL.iter().map(|&d| Arc::new(ScalarUDF::new_from_impl(DistanceUdf::new(d)))).collect()
}

fn is_vector_type(t: &DataType) -> bool {
    match t {
        DataType::FixedSizeList(f, _) | DataType::List(f) | DataType::LargeList(f) => f.data_type().is_numeric(),
        DataType::Null | DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => true,
        _ => false,
    }
}

impl ScalarUDFImpl for DistanceUdf {
    fn name(&self) -> &str {
        self.distance.name()
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn aliases(&self) -> &[String] {
        &self.aliases
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        for (i, t) in arg_types.iter().enumerate() {
            if !is_vector_type(t) {
                return plan_err!(
                    "{}: argument {} must be a vector (list of numbers or '[...]' string), got {t}",
                    self.name(),
                    i + 1
                );
            }
        }
        if let [DataType::FixedSizeList(_, a), DataType::FixedSizeList(_, b)] = arg_types {
            if a != b {
                return plan_err!("{}: vectors of dimension {a} and {b}", self.name());
            }
        }
        Ok(DataType::Float64)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let name = self.name();
        let [a, b] = args.args.as_slice() else {
            return exec_err!("{name}: takes 2 arguments, got {}", args.args.len());
        };
        let (a, b) = (Vectors::from_arg(name, a)?, Vectors::from_arg(name, b)?);
        let rows = if a.is_scalar() && b.is_scalar() { 1 } else { args.number_rows };
        let mut out = Float64Array::builder(rows);
        for row in 0..rows {
            match (a.get(row), b.get(row)) {
                (Some(x), Some(y)) if x.len() != y.len() => {
                    return exec_err!("{name}: vectors of dimension {} and {} (row {row})", x.len(), y.len())
                }
                (Some(x), Some(y)) => out.append_option(self.distance.eval(x, y)),
                _ => out.append_null(),
            }
        }
        let out = out.finish();
        if rows == 1 && a.is_scalar() && b.is_scalar() {
            return Ok(ColumnarValue::Scalar(datafusion::common::ScalarValue::try_from_array(&out, 0)?));
        }
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}

/// The vector a literal argument holds (array literal or `'[...]'` string); `None` when
/// it is NULL or not a vector.
pub fn literal_vector(value: &datafusion::common::ScalarValue) -> Option<Vec<f32>> {
    row_vectors(&ColumnarValue::Scalar(value.clone()), 1).ok()?.pop().flatten()
}

/// `v` as a `'[...]'` string literal, each value the shortest decimal that reads back as
/// the same `f32` (or `f64`: the functions read a string literal's values as `f64`): one
/// literal to plan, not an expression per element. Written with ryu, a quarter of
/// `Display`'s time (784 values: 0.05 ms against 0.2), as it runs on every search.
pub fn vector_literal<T: ryu::Float>(v: &[T]) -> String {
    let mut out = String::with_capacity(4 + v.len() * 22);
    let mut buffer = ryu::Buffer::new();
    out.push_str("'[");
    for (i, x) in v.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str(buffer.format(*x));
    }
    out.push_str("]'");
    out
}

/// Each of `rows` rows' vector in `values` (a vector column, or one literal for every
/// row), as FAISS searches it; `None` where NULL.
pub fn row_vectors(values: &ColumnarValue, rows: usize) -> Result<Vec<Option<Vec<f32>>>> {
    let v = Vectors::from_arg("query", values)?;
    Ok((0..rows)
        .map(|r| {
            v.get(r).map(|x| match x {
                Vector::F32(x) => x.to_vec(),
                Vector::F64(x) => x.iter().map(|&v| v as f32).collect(),
            })
        })
        .collect())
}
