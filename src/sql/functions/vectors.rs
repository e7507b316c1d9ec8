//! Vector arguments of the distance functions, viewed without per-row allocation: a
//! column of `FixedSizeList` / `List` / `LargeList` of numbers, or one literal vector
//! (an array literal `[0.1, ...]` or a string `'[0.1, ...]'`) applied to every row.
//! Float32 elements stay Float32 (widening each to f64 as it is used gives the values
//! DataFusion's cast to Float64 gives); every other number type is cast to Float64, as
//! DataFusion's own distance functions do.

use std::ops::Range;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, Float32Array, Float64Array};
use datafusion::arrow::buffer::{NullBuffer, OffsetBuffer};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Float32Type, Float64Type};
use datafusion::common::{exec_datafusion_err, exec_err, Result, ScalarValue};
use datafusion::logical_expr::ColumnarValue;

enum Rows {
    Fixed(usize),
    Offsets32(OffsetBuffer<i32>),
    Offsets64(OffsetBuffer<i64>),
}

enum Values {
    F32(Float32Array),
    F64(Float64Array),
}

impl Values {
    fn nulls(&self) -> Option<&NullBuffer> {
        match self {
            Values::F32(v) => v.nulls(),
            Values::F64(v) => v.nulls(),
        }
    }
}

/// One row's vector.
#[derive(Clone, Copy)]
pub(super) enum Vector<'a> {
    F32(&'a [f32]),
    F64(&'a [f64]),
}

impl Vector<'_> {
    pub(super) fn len(&self) -> usize {
        match self {
            Vector::F32(v) => v.len(),
            Vector::F64(v) => v.len(),
        }
    }
}

/// Vectors of one argument; row `i` is `values[range(i)]`, or NULL.
pub(super) struct Vectors {
    values: Values,
    rows: Rows,
    nulls: Option<NullBuffer>,
    /// One vector (a literal) for every row.
    broadcast: bool,
}

impl Vectors {
    pub(super) fn from_arg(name: &str, arg: &ColumnarValue) -> Result<Vectors> {
        match arg {
            ColumnarValue::Array(array) => Self::from_array(name, array, false),
            ColumnarValue::Scalar(
                ScalarValue::Utf8(Some(s)) | ScalarValue::LargeUtf8(Some(s)) | ScalarValue::Utf8View(Some(s)),
            ) => {
                let v = parse(name, s)?;
                let len = v.len() as i32;
                Ok(Vectors {
                    values: Values::F64(Float64Array::from(v)),
                    rows: Rows::Offsets32(OffsetBuffer::new(vec![0, len].into())),
                    nulls: None,
                    broadcast: true,
                })
            }
            ColumnarValue::Scalar(scalar) => Self::from_array(name, &scalar.to_array_of_size(1)?, true),
        }
    }

    fn from_array(name: &str, array: &ArrayRef, broadcast: bool) -> Result<Vectors> {
        let (values, rows) = match array.data_type() {
            DataType::FixedSizeList(_, n) => {
                let a = array.as_fixed_size_list();
                (a.values().clone(), Rows::Fixed(*n as usize))
            }
            DataType::List(_) => {
                let a = array.as_list::<i32>();
                (a.values().clone(), Rows::Offsets32(a.offsets().clone()))
            }
            DataType::LargeList(_) => {
                let a = array.as_list::<i64>();
                (a.values().clone(), Rows::Offsets64(a.offsets().clone()))
            }
            DataType::Null => {
                return Ok(Vectors {
                    values: Values::F64(Float64Array::from(Vec::<f64>::new())),
                    rows: Rows::Fixed(0),
                    nulls: Some(NullBuffer::new_null(array.len())),
                    broadcast,
                })
            }
            other => return exec_err!("{name}: expected a vector (list of floats), got {other}"),
        };
        let values = match values.data_type() {
            DataType::Float32 => Values::F32(values.as_primitive::<Float32Type>().clone()),
            DataType::Float64 => Values::F64(values.as_primitive::<Float64Type>().clone()),
            // An empty literal `[]` has Null elements.
            t if t.is_numeric() || *t == DataType::Null => {
                Values::F64(cast(&values, &DataType::Float64)?.as_primitive::<Float64Type>().clone())
            }
            other => return exec_err!("{name}: vector elements must be numbers, got {other}"),
        };
        Ok(Vectors { values, rows, nulls: array.logical_nulls(), broadcast })
    }

    fn range(&self, row: usize) -> Range<usize> {
        match &self.rows {
            Rows::Fixed(n) => row * n..(row + 1) * n,
            Rows::Offsets32(o) => o[row] as usize..o[row + 1] as usize,
            Rows::Offsets64(o) => o[row] as usize..o[row + 1] as usize,
        }
    }

    /// Row `row`'s vector, or `None` when it (or one of its elements) is NULL.
    pub(super) fn get(&self, row: usize) -> Option<Vector<'_>> {
        let row = if self.broadcast { 0 } else { row };
        if self.nulls.as_ref().is_some_and(|n| n.is_null(row)) {
            return None;
        }
        let r = self.range(row);
        if self.values.nulls().is_some_and(|n| n.null_count() > 0 && (r.start..r.end).any(|j| n.is_null(j))) {
            return None;
        }
        Some(match &self.values {
            Values::F32(v) => Vector::F32(&v.values()[r]),
            Values::F64(v) => Vector::F64(&v.values()[r]),
        })
    }

    pub(super) fn is_scalar(&self) -> bool {
        self.broadcast
    }
}

/// Parses `'[0.1, 0.2, ...]'` (brackets optional, commas or spaces between numbers).
fn parse(name: &str, text: &str) -> Result<Vec<f64>> {
    let inner = text.trim();
    let inner = inner.strip_prefix('[').and_then(|s| s.strip_suffix(']')).unwrap_or(inner);
    inner
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|t| !t.is_empty())
        .enumerate()
        .map(|(i, t)| {
            let v: f64 = t.parse().map_err(|_| {
                exec_datafusion_err!("{name}: cannot read '{t}' (element {i}) of vector '{text}' as a number")
            })?;
            if v.is_finite() {
                Ok(v)
            } else {
                Err(exec_datafusion_err!("{name}: element {i} of vector '{text}' is not finite"))
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::parse;
    use crate::sql::functions::vector_literal;

    /// A search's literal must give the functions the very values it was made from:
    /// `f64` for Python's queries (widened `f32`), `f32` for the demo's.
    #[test]
    fn a_vector_literal_reads_back_as_its_values() {
        let mut wide: Vec<f64> = (0..784).map(|i| ((i as f32 * 0.7311).sin() * 0.37) as f64).collect();
        wide.extend([1e-7, -0.0, 0.0, 1.0, 1e20, 123456789.0, f64::MIN_POSITIVE, -3.5e-300]);
        let read = parse("q", vector_literal(&wide).trim_matches('\'')).unwrap();
        assert_eq!(
            read.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            wide.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );

        let narrow: Vec<f32> = wide.iter().map(|&v| v as f32).collect();
        let text = vector_literal(&narrow);
        let read = parse("q", text.trim_matches('\'')).unwrap();
        assert_eq!(
            read.iter().map(|&v| (v as f32).to_bits()).collect::<Vec<_>>(),
            narrow.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );

        assert!(parse("q", vector_literal(&[1.0f64, f64::NAN]).trim_matches('\''))
            .unwrap_err()
            .to_string()
            .contains("element 1"));
    }
}
