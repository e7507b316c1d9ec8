#include "datafusion-faiss/cpp/bridge.h"

#include <cxxabi.h>
#include <omp.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <stdexcept>
#include <string>
#include <typeinfo>

#include <faiss/IndexFlat.h>
#include <faiss/IndexHNSW.h>
#include <faiss/IndexIDMap.h>
#include <faiss/IndexIVF.h>
#include <faiss/IndexIVFFlat.h>
#include <faiss/IndexIVFPQ.h>
#include <faiss/IndexIVFRaBitQ.h>
#include <faiss/IndexPreTransform.h>
#include <faiss/IVFlib.h>
#include <faiss/IndexScalarQuantizer.h>
#include <faiss/VectorTransform.h>
#include <faiss/impl/io.h>
#include <faiss/index_factory.h>
#include <faiss/index_io.h>
#include <faiss/invlists/InvertedLists.h>
#include <faiss/invlists/InvertedListsIOHook.h>
#include <faiss/utils/Heap.h>
#include <faiss/utils/distances.h>

#include "datafusion-faiss/src/ffi.rs.h"

namespace dff {

namespace {

// Sets the calling thread's OpenMP team size for one call and restores it after:
// searches run one per worker thread (parallelism comes from Rust), builds use all cores.
class OmpThreads {
   public:
    explicit OmpThreads(int n) : saved_(omp_get_max_threads()) { omp_set_num_threads(n); }
    ~OmpThreads() { omp_set_num_threads(saved_); }

   private:
    int saved_;
};

template <class T>
std::string type_name(const T& obj) {
    const char* raw = typeid(obj).name();
    int status = 0;
    char* name = abi::__cxa_demangle(raw, nullptr, nullptr, &status);
    std::string out = status == 0 && name ? name : raw;
    free(name);
    return out;
}

// Reads the index header through the Rust HeaderSource. The inverted-list data is
// never read: the hook below records where it lies and skips over it.
struct HeaderReader : faiss::IOReader {
    explicit HeaderReader(HeaderSource& src) : src(src) {}

    size_t operator()(void* ptr, size_t size, size_t nitems) override {
        size_t len = 0;
        if (__builtin_mul_overflow(size, nitems, &len)) {
            throw std::runtime_error("read size overflows at offset " + std::to_string(pos));
        }
        if (len > 0) {
            src.read_at(pos, rust::Slice<uint8_t>(static_cast<uint8_t*>(ptr), len));
        }
        pos += len;
        return nitems;
    }

    HeaderSource& src;
    uint64_t pos = 0;
    bool lists_seen = false;
    uint64_t data_start = 0;
    uint64_t data_end = 0;
    std::vector<size_t> sizes;
};

// Sizes only: FAISS must never look at list contents through it; searches get the
// bytes passed in explicitly.
struct SizesOnlyLists : faiss::ReadOnlyInvertedLists {
    SizesOnlyLists(size_t nlist, size_t code_size, const std::vector<size_t>& sizes)
            : faiss::ReadOnlyInvertedLists(nlist, code_size), sizes(sizes) {}

    size_t list_size(size_t list_no) const override { return sizes.at(list_no); }
    const uint8_t* get_codes(size_t) const override {
        throw std::logic_error("list data is not resident in FAISS (datafusion-faiss)");
    }
    const faiss::idx_t* get_ids(size_t) const override {
        throw std::logic_error("list data is not resident in FAISS (datafusion-faiss)");
    }

    std::vector<size_t> sizes;
};

const char* HOOK_KEY = "ilDF";

struct SkipListsHook : faiss::InvertedListsIOHook {
    SkipListsHook() : faiss::InvertedListsIOHook(HOOK_KEY, typeid(SizesOnlyLists).name()) {}

    void write(const faiss::InvertedLists*, faiss::IOWriter*) const override {
        throw std::logic_error("datafusion-faiss does not write lists through its hook");
    }
    faiss::InvertedLists* read(faiss::IOReader*, int) const override {
        throw std::logic_error("datafusion-faiss reads lists only through read_ArrayInvertedLists");
    }

    faiss::InvertedLists* read_ArrayInvertedLists(faiss::IOReader* f, int, size_t nlist,
                                                  size_t code_size,
                                                  const std::vector<size_t>& sizes) const override {
        auto* reader = dynamic_cast<HeaderReader*>(f);
        if (!reader) {
            throw std::logic_error("datafusion-faiss list hook used outside its own reader");
        }
        if (reader->lists_seen) {
            throw std::runtime_error("index has more than one inverted-list section");
        }
        uint64_t total = 0;
        for (size_t i = 0; i < sizes.size(); i++) {
            uint64_t bytes = 0;
            if (__builtin_mul_overflow(uint64_t(sizes[i]), uint64_t(code_size) + 8, &bytes) ||
                __builtin_add_overflow(total, bytes, &total)) {
                throw std::runtime_error("list-size table overflows at list " +
                                         std::to_string(i));
            }
        }
        reader->lists_seen = true;
        reader->data_start = reader->pos;
        if (__builtin_add_overflow(reader->pos, total, &reader->data_end)) {
            throw std::runtime_error("list-size table overflows the file offset");
        }
        reader->sizes = sizes;
        reader->pos = reader->data_end;
        return new SizesOnlyLists(nlist, code_size, sizes);
    }
};

void register_hook() {
    static std::once_flag once;
    std::call_once(once, [] { faiss::InvertedListsIOHook::add_callback(new SkipListsHook()); });
}

int hook_flags() {
    uint32_t key = 0;
    std::memcpy(&key, HOOK_KEY, 4);
    return faiss::IO_FLAG_SKIP_IVF_DATA | int(key & 0xffff0000u);
}

// The parts of an index tree a search goes through, outermost wrapper first.
struct Unwrapped {
    const faiss::IndexIVF* ivf = nullptr;
    std::vector<const faiss::VectorTransform*> chain;
    std::vector<const std::vector<int64_t>*> id_maps;  // innermost first
    std::string unsupported;
    std::string description;
};

// `pq_m`: subquantizers of the IVF-PQ the chain feeds (0 if none). FAISS writes an
// OPQMatrix as a plain LinearTransform (tag LTra) and reads it back as one, so an
// orthonormal LinearTransform is named as the factory string that made it, OPQ<M>_<d>.
std::string describe_transform(const faiss::VectorTransform* vt, size_t pq_m) {
    if (auto* opq = dynamic_cast<const faiss::OPQMatrix*>(vt)) {
        return "OPQ" + std::to_string(opq->M) + "_" + std::to_string(opq->d_out);
    }
    if (typeid(*vt) == typeid(faiss::LinearTransform)) {
        auto* lt = static_cast<const faiss::LinearTransform*>(vt);
        if (lt->is_orthonormal) {
            return "OPQ" + (pq_m ? std::to_string(pq_m) : std::string()) + "_" + std::to_string(vt->d_out);
        }
        return "LinearTransform" + std::to_string(vt->d_in) + "_" + std::to_string(vt->d_out);
    }
    if (auto* pca = dynamic_cast<const faiss::PCAMatrix*>(vt)) {
        std::string s = "PCA";
        if (pca->eigen_power != 0) s += "W";
        if (pca->random_rotation) s += "R";
        return s + std::to_string(pca->d_out);
    }
    if (dynamic_cast<const faiss::RandomRotationMatrix*>(vt)) {
        return "RR" + std::to_string(vt->d_out);
    }
    if (dynamic_cast<const faiss::NormalizationTransform*>(vt)) return "L2norm";
    if (dynamic_cast<const faiss::CenteringTransform*>(vt)) return "Center";
    return type_name(*vt);
}

std::string describe_sq(faiss::ScalarQuantizer::QuantizerType qt) {
    switch (qt) {
        case faiss::ScalarQuantizer::QT_8bit: return "SQ8";
        case faiss::ScalarQuantizer::QT_4bit: return "SQ4";
        case faiss::ScalarQuantizer::QT_8bit_uniform: return "SQ8_uniform";
        case faiss::ScalarQuantizer::QT_4bit_uniform: return "SQ4_uniform";
        case faiss::ScalarQuantizer::QT_fp16: return "SQfp16";
        case faiss::ScalarQuantizer::QT_8bit_direct: return "SQ8_direct";
        case faiss::ScalarQuantizer::QT_6bit: return "SQ6";
        case faiss::ScalarQuantizer::QT_bf16: return "SQbf16";
        case faiss::ScalarQuantizer::QT_8bit_direct_signed: return "SQ8_direct_signed";
    }
    return "SQ?";
}

Unwrapped unwrap(const faiss::Index* index) {
    Unwrapped u;
    std::vector<std::string> parts;
    // Transforms are named once the IVF index is known (OPQ takes its PQ's M).
    std::vector<std::pair<size_t, const faiss::VectorTransform*>> transforms;
    const faiss::Index* cur = index;
    while (cur) {
        if (auto* m = dynamic_cast<const faiss::IndexIDMap*>(cur)) {
            parts.push_back(dynamic_cast<const faiss::IndexIDMap2*>(cur) ? "IDMap2" : "IDMap");
            u.id_maps.insert(u.id_maps.begin(), &m->id_map);
            cur = m->index;
        } else if (auto* pt = dynamic_cast<const faiss::IndexPreTransform*>(cur)) {
            for (auto* vt : pt->chain) {
                transforms.emplace_back(parts.size(), vt);
                parts.emplace_back();
                u.chain.push_back(vt);
            }
            cur = pt->index;
        } else {
            break;
        }
    }
    // Exact types: subclasses (FastScan, PQR, FlatDedup, ...) lay out or search lists
    // differently.
    const std::type_info& t = typeid(*cur);
    auto* ivf = dynamic_cast<const faiss::IndexIVF*>(cur);
    if (ivf && (t == typeid(faiss::IndexIVFFlat) || t == typeid(faiss::IndexIVFScalarQuantizer) ||
                t == typeid(faiss::IndexIVFPQ) || t == typeid(faiss::IndexIVFRaBitQ))) {
        u.ivf = ivf;
        std::string ivf_part = "IVF" + std::to_string(ivf->nlist);
        // The quantizers the header check reads field by field (src/index/format.rs).
        const std::type_info& q = typeid(*ivf->quantizer);
        if (q == typeid(faiss::IndexHNSWFlat)) {
            auto* hnsw = static_cast<const faiss::IndexHNSWFlat*>(ivf->quantizer);
            ivf_part += "_HNSW" + std::to_string(hnsw->hnsw.nb_neighbors(1));
        } else if (q != typeid(faiss::IndexFlat) && q != typeid(faiss::IndexFlatL2) &&
                   q != typeid(faiss::IndexFlatIP)) {
            u.unsupported = "IVF with coarse quantizer " + type_name(*ivf->quantizer);
        }
        parts.push_back(ivf_part);
        if (auto* sq = dynamic_cast<const faiss::IndexIVFScalarQuantizer*>(ivf)) {
            parts.push_back(describe_sq(sq->sq.qtype));
        } else if (auto* pq = dynamic_cast<const faiss::IndexIVFPQ*>(ivf)) {
            parts.push_back("PQ" + std::to_string(pq->pq.M) + "x" + std::to_string(pq->pq.nbits));
        } else if (t == typeid(faiss::IndexIVFRaBitQ)) {
            parts.push_back("RaBitQ");
        } else {
            parts.push_back("Flat");
        }
    } else {
        u.unsupported = type_name(*cur);
        parts.push_back(u.unsupported);
    }
    auto* pq = dynamic_cast<const faiss::IndexIVFPQ*>(u.ivf);
    for (auto& [at, vt] : transforms) {
        parts[at] = describe_transform(vt, pq ? pq->pq.M : 0);
    }
    for (size_t i = 0; i < parts.size(); i++) {
        u.description += (i ? "," : "") + parts[i];
    }
    return u;
}

IndexInfo make_info(const faiss::Index* root, const faiss::IndexIVF* ivf, size_t transforms,
                    const std::string& description, const std::string& unsupported) {
    IndexInfo info{};
    info.d = root->d;
    info.metric = int32_t(root->metric_type);
    info.ntotal = root->ntotal;
    info.transforms = transforms;
    info.description = rust::String(description);
    info.unsupported = rust::String(unsupported);
    if (ivf) {
        info.d_ivf = ivf->d;
        info.nlist = ivf->nlist;
        info.code_size = ivf->code_size;
    }
    return info;
}

// Translates labels through IDMap id maps, innermost first, as IndexIDMap::search does.
void map_labels(const std::vector<const std::vector<int64_t>*>& id_maps, rust::Slice<int64_t> labels) {
    for (const auto* map : id_maps) {
        for (auto& l : labels) {
            if (l < 0) continue;
            if (size_t(l) >= map->size()) {
                throw std::out_of_range("label " + std::to_string(l) + " beyond the id map (" +
                                        std::to_string(map->size()) + " entries)");
            }
            l = (*map)[l];
        }
    }
}

// Admits a list entry when its label (after the id maps) is in the sorted `allowed` set.
struct AllowedIds : faiss::IDSelector {
    rust::Slice<const int64_t> allowed;
    const std::vector<const std::vector<int64_t>*>& id_maps;

    AllowedIds(rust::Slice<const int64_t> allowed,
               const std::vector<const std::vector<int64_t>*>& id_maps)
            : allowed(allowed), id_maps(id_maps) {}

    bool is_member(faiss::idx_t id) const override {
        int64_t label = id;
        for (const auto* map : id_maps) {
            if (label < 0 || size_t(label) >= map->size()) return false;
            label = (*map)[label];
        }
        return std::binary_search(allowed.begin(), allowed.end(), label);
    }
};

void check_len(const char* what, size_t got, size_t want) {
    if (got != want) {
        throw std::invalid_argument(std::string(what) + ": expected " + std::to_string(want) +
                                    " values, got " + std::to_string(got));
    }
}

}  // namespace

IvfIndex::IvfIndex(std::unique_ptr<faiss::Index> root, uint64_t data_start, uint64_t data_end,
                   std::vector<size_t> sizes)
        : root_(std::move(root)), data_start_(data_start), data_end_(data_end),
          sizes_(std::move(sizes)) {
    Unwrapped u = unwrap(root_.get());
    ivf_ = u.ivf;
    chain_ = std::move(u.chain);
    id_maps_ = std::move(u.id_maps);
    description_ = std::move(u.description);
    unsupported_ = std::move(u.unsupported);
}

IvfIndex::~IvfIndex() = default;

IndexInfo IvfIndex::info() const {
    IndexInfo info = make_info(root_.get(), ivf_, chain_.size(), description_, unsupported_);
    info.data_start = data_start_;
    info.data_end = data_end_;
    info.id_maps = id_maps_.size();
    return info;
}

rust::Vec<uint64_t> IvfIndex::list_sizes() const {
    rust::Vec<uint64_t> out;
    out.reserve(sizes_.size());
    for (size_t s : sizes_) out.push_back(s);
    return out;
}

void IvfIndex::assign(rust::Slice<const float> queries, size_t nprobe,
                      rust::Slice<int64_t> lists, rust::Slice<float> coarse,
                      rust::Slice<float> transformed) const {
    if (!ivf_) throw std::logic_error("index type is not searchable");
    OmpThreads one{1};
    size_t n = queries.size() / root_->d;
    check_len("assignment buffer", lists.size(), n * nprobe);
    check_len("coarse distance buffer", coarse.size(), n * nprobe);
    const float* x = queries.data();
    std::unique_ptr<float[]> owned;
    for (auto* vt : chain_) {
        float* y = vt->apply(n, x);
        owned.reset(y);
        x = y;
    }
    if (!chain_.empty()) {
        check_len("transformed query buffer", transformed.size(), n * ivf_->d);
        std::memcpy(transformed.data(), x, n * ivf_->d * sizeof(float));
    }
    ivf_->quantizer->search(n, x, nprobe, coarse.data(), lists.data());
}

void IvfIndex::coarse_of(rust::Slice<const float> query, rust::Slice<const int64_t> lists,
                         rust::Slice<float> coarse, rust::Slice<float> transformed) const {
    if (!ivf_) throw std::logic_error("index type is not searchable");
    OmpThreads one{1};
    check_len("query", query.size(), root_->d);
    check_len("coarse distance buffer", coarse.size(), lists.size());
    for (int64_t l : lists) {
        if (l < 0 || size_t(l) >= sizes_.size()) {
            throw std::out_of_range("list " + std::to_string(l) + " beyond nlist " +
                                    std::to_string(sizes_.size()));
        }
    }
    const float* x = query.data();
    std::unique_ptr<float[]> owned;
    for (auto* vt : chain_) {
        float* y = vt->apply(1, x);
        owned.reset(y);
        x = y;
    }
    if (!chain_.empty()) {
        check_len("transformed query buffer", transformed.size(), ivf_->d);
        std::memcpy(transformed.data(), x, ivf_->d * sizeof(float));
    }
    // What the quantizer's search reports for these lists (its metric, from the stored
    // centroids), which the scanners of residual codes build on.
    const faiss::Index* q = ivf_->quantizer;
    std::vector<float> centroid(q->d);
    for (size_t i = 0; i < lists.size(); i++) {
        q->reconstruct(lists[i], centroid.data());
        coarse[i] = q->metric_type == faiss::METRIC_INNER_PRODUCT
                            ? faiss::fvec_inner_product(x, centroid.data(), q->d)
                            : faiss::fvec_L2sqr(x, centroid.data(), q->d);
    }
}

ScanStats IvfIndex::scan(rust::Slice<const float> queries, size_t k, size_t nprobe,
                         rust::Slice<const int64_t> lists, rust::Slice<const float> coarse,
                         rust::Slice<const ListBytes> data, bool partial, bool filtered,
                         rust::Slice<const int64_t> allowed, rust::Slice<float> distances,
                         rust::Slice<int64_t> labels) const {
    if (!ivf_) throw std::logic_error("index type is not searchable");
    OmpThreads one{1};
    size_t d = ivf_->d;
    size_t n = queries.size() / d;
    check_len("assignment", lists.size(), n * nprobe);
    check_len("coarse distances", coarse.size(), n * nprobe);
    check_len("distance buffer", distances.size(), n * k);
    check_len("label buffer", labels.size(), n * k);
    size_t code_size = ivf_->code_size;
    bool ip = ivf_->metric_type == faiss::METRIC_INNER_PRODUCT;

    AllowedIds selector(allowed, id_maps_);
    std::unique_ptr<faiss::InvertedListScanner> scanner(
            ivf_->get_InvertedListScanner(false, filtered ? &selector : nullptr));
    ScanStats stats{};

    // Same loop as IndexIVF::search_preassigned (one query at a time, probes in
    // assignment order, same heap), so results equal FAISS's own search.
    for (size_t i = 0; i < n; i++) {
        float* dis = distances.data() + i * k;
        int64_t* ids = labels.data() + i * k;
        if (ip) {
            faiss::heap_heapify<faiss::CMin<float, int64_t>>(k, dis, ids);
        } else {
            faiss::heap_heapify<faiss::CMax<float, int64_t>>(k, dis, ids);
        }
        scanner->set_query(queries.data() + i * d);
        for (size_t p = 0; p < nprobe; p++) {
            int64_t key = lists[i * nprobe + p];
            if (key < 0) continue;
            if (size_t(key) >= sizes_.size()) {
                throw std::out_of_range("quantizer returned list " + std::to_string(key) +
                                        " beyond nlist " + std::to_string(sizes_.size()));
            }
            size_t size = sizes_[key];
            if (size == 0) continue;
            auto it = std::lower_bound(data.begin(), data.end(), key,
                                       [](const ListBytes& l, int64_t key) { return l.list_no < key; });
            if (it == data.end() || it->list_no != key) {
                throw std::invalid_argument("bytes of list " + std::to_string(key) +
                                            " were not provided");
            }
            if (partial) {
                // Some entries of the list, in its own layout: codes, then ids.
                size_t entry = code_size + 8;
                if (it->bytes.size() % entry != 0 || it->bytes.size() / entry > size) {
                    throw std::invalid_argument("entries of list " + std::to_string(key) +
                                                ": " + std::to_string(it->bytes.size()) +
                                                " bytes, not a whole number of at most " +
                                                std::to_string(size) + " entries");
                }
                size = it->bytes.size() / entry;
                if (size == 0) continue;
            }
            size_t codes_len = size * code_size;
            if (it->bytes.size() != codes_len + size * 8) {
                throw std::invalid_argument("list " + std::to_string(key) + " has " +
                                            std::to_string(it->bytes.size()) +
                                            " bytes, expected " +
                                            std::to_string(codes_len + size * 8));
            }
            // Lists sit at odd offsets of a FAISS file, so codes and ids of a mapped file
            // are misaligned: FAISS's own memory-mapped reading (IO_FLAG_MMAP_IFC) hands
            // its scanners the same views, so they are passed as they are, not copied.
            const uint8_t* codes = it->bytes.data();
            auto* list_ids = reinterpret_cast<const int64_t*>(codes + codes_len);
            scanner->set_list(key, coarse[i * nprobe + p]);
            stats.heap_updates += scanner->scan_codes(size, codes, list_ids, dis, ids, k);
            stats.lists_scanned += 1;
            stats.codes_scanned += size;
        }
        if (ip) {
            faiss::heap_reorder<faiss::CMin<float, int64_t>>(k, dis, ids);
        } else {
            faiss::heap_reorder<faiss::CMax<float, int64_t>>(k, dis, ids);
        }
    }
    map_labels(id_maps_, labels);
    return stats;
}

std::unique_ptr<IvfIndex> open_index(HeaderSource& src) {
    register_hook();
    HeaderReader reader(src);
    std::unique_ptr<faiss::Index> root(faiss::read_index(&reader, hook_flags()));
    auto index = std::make_unique<IvfIndex>(std::move(root), reader.data_start, reader.data_end,
                                            std::move(reader.sizes));
    // An unsupported type is reported by name from info(); a supported one must have
    // gone through the hook.
    if (!reader.lists_seen && index->info().unsupported.empty()) {
        throw std::runtime_error("index has no inverted-list section that can be read in place");
    }
    return index;
}

FaissIndex::FaissIndex(faiss::Index* index) : index_(index) {}
FaissIndex::~FaissIndex() = default;

IndexInfo FaissIndex::info() const {
    Unwrapped u = unwrap(index_.get());
    IndexInfo info = make_info(index_.get(), u.ivf, u.chain.size(), u.description, u.unsupported);
    info.id_maps = u.id_maps.size();
    return info;
}

void FaissIndex::train(rust::Slice<const float> x, size_t threads) {
    OmpThreads t{int(threads)};
    index_->train(x.size() / index_->d, x.data());
}

void FaissIndex::add(rust::Slice<const float> x, rust::Slice<const int64_t> ids, size_t threads) {
    OmpThreads t{int(threads)};
    size_t n = x.size() / index_->d;
    check_len("ids", ids.size(), n);
    index_->add_with_ids(n, x.data(), ids.data());
}

void FaissIndex::write_file(rust::Str path) const {
    faiss::write_index(index_.get(), std::string(path).c_str());
}

void FaissIndex::search(rust::Slice<const float> queries, size_t k, size_t nprobe,
                        rust::Slice<float> distances, rust::Slice<int64_t> labels) const {
    OmpThreads one{1};
    size_t n = queries.size() / index_->d;
    check_len("distance buffer", distances.size(), n * k);
    check_len("label buffer", labels.size(), n * k);
    faiss::SearchParametersIVF params;
    params.nprobe = nprobe;
    index_->search(n, queries.data(), k, distances.data(), labels.data(), &params);
}

std::unique_ptr<FaissIndex> empty_like(HeaderSource& src) {
    register_hook();
    HeaderReader reader(src);
    std::unique_ptr<faiss::Index> root(faiss::read_index(&reader, hook_flags()));
    faiss::IndexIVF* ivf = faiss::ivflib::try_extract_index_ivf(root.get());
    if (ivf == nullptr || !reader.lists_seen) {
        throw std::runtime_error("not an IVF index whose lists can be left unread");
    }
    // The lists read as sizes only become empty lists that take vectors.
    ivf->replace_invlists(new faiss::ArrayInvertedLists(ivf->nlist, ivf->code_size), true);
    root->reset();
    return std::make_unique<FaissIndex>(root.release());
}

std::unique_ptr<FaissIndex> new_index(size_t d, rust::Str factory, int32_t metric) {
    std::string spec(factory);
    return std::make_unique<FaissIndex>(
            faiss::index_factory(int(d), spec.c_str(), faiss::MetricType(metric)));
}

std::unique_ptr<FaissIndex> read_full(rust::Slice<const uint8_t> bytes) {
    faiss::VectorIOReader reader;
    reader.data.assign(bytes.begin(), bytes.end());
    return std::make_unique<FaissIndex>(faiss::read_index(&reader));
}

}  // namespace dff
