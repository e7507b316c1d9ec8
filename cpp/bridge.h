// The narrow C++ side of datafusion-faiss: FAISS objects stay opaque, Rust passes
// slices in and gets plain structs out. Nothing here does I/O of its own: header bytes
// come from a Rust callback, list bytes are handed in by the caller.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "rust/cxx.h"

namespace faiss {
struct Index;
struct IndexIVF;
struct VectorTransform;
} // namespace faiss

namespace dff {

struct HeaderSource;
struct IndexInfo;
struct ListBytes;
struct ScanStats;

// An IVF index read without its inverted-list data. Immutable after open, so every
// method is const and safe to call from many threads at once.
class IvfIndex {
   public:
    IvfIndex(std::unique_ptr<faiss::Index> root, uint64_t data_start, uint64_t data_end,
             std::vector<size_t> sizes);
    ~IvfIndex();

    IndexInfo info() const;
    rust::Vec<uint64_t> list_sizes() const;
    void assign(rust::Slice<const float> queries, size_t nprobe, rust::Slice<int64_t> lists,
                rust::Slice<float> coarse, rust::Slice<float> transformed) const;
    void coarse_of(rust::Slice<const float> query, rust::Slice<const int64_t> lists,
                   rust::Slice<float> coarse, rust::Slice<float> transformed) const;
    ScanStats scan(rust::Slice<const float> queries, size_t k, size_t nprobe,
                   rust::Slice<const int64_t> lists, rust::Slice<const float> coarse,
                   rust::Slice<const ListBytes> data, bool partial, bool filtered,
                   rust::Slice<const int64_t> allowed, rust::Slice<float> distances,
                   rust::Slice<int64_t> labels) const;

   private:
    std::unique_ptr<faiss::Index> root_;
    const faiss::IndexIVF* ivf_ = nullptr;
    std::vector<const faiss::VectorTransform*> chain_;
    // Id maps from IDMap wrappers, innermost first.
    std::vector<const std::vector<int64_t>*> id_maps_;
    std::string description_;
    std::string unsupported_;
    uint64_t data_start_;
    uint64_t data_end_;
    std::vector<size_t> sizes_;
};

std::unique_ptr<IvfIndex> open_index(HeaderSource& src);

// A complete in-memory FAISS index: used to build new index files, and as the
// reference (FAISS's own search over the whole file).
class FaissIndex {
   public:
    explicit FaissIndex(faiss::Index* index);
    ~FaissIndex();

    IndexInfo info() const;
    void train(rust::Slice<const float> x, size_t threads);
    void add(rust::Slice<const float> x, rust::Slice<const int64_t> ids, size_t threads);
    void write_file(rust::Str path) const;
    void search(rust::Slice<const float> queries, size_t k, size_t nprobe,
                rust::Slice<float> distances, rust::Slice<int64_t> labels) const;

   private:
    std::unique_ptr<faiss::Index> index_;
};

std::unique_ptr<FaissIndex> new_index(size_t d, rust::Str factory, int32_t metric);
std::unique_ptr<FaissIndex> read_full(rust::Slice<const uint8_t> bytes);
std::unique_ptr<FaissIndex> empty_like(HeaderSource& src);

} // namespace dff
