//! Vector arguments of the distance functions, viewed without per-row allocation: a
//! column of `FixedSizeList` / `List` / `LargeList` of floats, or one literal vector
//! (an array literal `[0.1, ...]` or a string `'[0.1, ...]'`) applied to every row.

use std::ops::Range;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, Float32Array};
use datafusion::arrow::buffer::{NullBuffer, OffsetBuffer};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Float32Type};
use datafusion::common::{exec_datafusion_err, exec_err, Result, ScalarValue};
use datafusion::logical_expr::ColumnarValue;

enum Rows {
    Fixed(usize),
    Offsets32(OffsetBuffer<i32>),
    Offsets64(OffsetBuffer<i64>),
}

/// Vectors of one argument; row `i` is `values[range(i)]`, or NULL.
pub(super) struct Vectors {
    values: Float32Array,
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
                    values: Float32Array::from(v),
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
                    values: Float32Array::from(Vec::<f32>::new()),
                    rows: Rows::Fixed(0),
                    nulls: Some(NullBuffer::new_null(array.len())),
                    broadcast,
                })
            }
            other => return exec_err!("{name}: expected a vector (list of floats), got {other}"),
        };
        let values = match values.data_type() {
            DataType::Float32 => values.as_primitive::<Float32Type>().clone(),
            t if t.is_numeric() => cast(&values, &DataType::Float32)?.as_primitive::<Float32Type>().clone(),
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
    pub(super) fn get(&self, row: usize) -> Option<&[f32]> {
        let row = if self.broadcast { 0 } else { row };
        if self.nulls.as_ref().is_some_and(|n| n.is_null(row)) {
            return None;
        }
        let r = self.range(row);
        if self.values.null_count() > 0 && self.values.nulls().is_some_and(|n| (r.start..r.end).any(|j| n.is_null(j))) {
            return None;
        }
        Some(&self.values.values()[r])
    }

    pub(super) fn is_scalar(&self) -> bool {
        self.broadcast
    }
}

/// Parses `'[0.1, 0.2, ...]'` (brackets optional, commas or spaces between numbers).
fn parse(name: &str, text: &str) -> Result<Vec<f32>> {
    let inner = text.trim();
    let inner = inner.strip_prefix('[').and_then(|s| s.strip_suffix(']')).unwrap_or(inner);
    inner
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|t| !t.is_empty())
        .enumerate()
        .map(|(i, t)| {
            let v: f32 = t.parse().map_err(|_| {
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
