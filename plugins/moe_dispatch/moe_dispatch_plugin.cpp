#include "moe_dispatch_plugin.h"

namespace ndp
{
using namespace nvinfer1;

namespace
{

constexpr char const* kName = "MoeDispatch";
constexpr int32_t kNbInputs = 5;
constexpr int32_t kNbOutputs = 1;
// inputs h router_logits correction_bias experts_up experts_down | output routed
constexpr char const* kSignature = "TffTTf";
constexpr char const* kPortNames[] = {"h", "router_logits", "correction_bias", "experts_up", "experts_down", "routed"};
constexpr int32_t kRanks[] = {2, 2, 1, 3, 3};
enum Port
{
    kH,
    kLOGITS,
    kBIAS,
    kUP,
    kDOWN
};

} // namespace

MoeDispatchPlugin::MoeDispatchPlugin(Attributes const& attributes)
    : PluginBase(kName)
    , mAttributes(attributes)
{
}

IPluginV3* MoeDispatchPlugin::clone() noexcept
{
    return newPlugin<MoeDispatchPlugin>(mAttributes);
}

int32_t MoeDispatchPlugin::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const*, int32_t nbInputs) const noexcept
{
    if (!checkArity(nbInputs, nbOutputs, kNbInputs, kNbOutputs))
    {
        return -1;
    }
    outputTypes[0] = DataType::kFLOAT;
    return 0;
}

int32_t MoeDispatchPlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const*, int32_t,
    DimsExprs* outputs, int32_t nbOutputs, IExprBuilder&) noexcept
{
    if (!checkArity(nbInputs, nbOutputs, kNbInputs, kNbOutputs)
        || !checkRanks(kName, kPortNames, inputs, kRanks, kNbInputs))
    {
        return -1;
    }
    outputs[0] = inputs[kH]; // routed [N, D]
    return 0;
}

bool MoeDispatchPlugin::supportsFormatCombination(
    int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept
{
    return nbInputs == kNbInputs && nbOutputs == kNbOutputs && supportsSignature(pos, inOut, kSignature);
}

int32_t MoeDispatchPlugin::configurePlugin(
    DynamicPluginTensorDesc const* in, int32_t nbInputs, DynamicPluginTensorDesc const*, int32_t nbOutputs) noexcept
{
    if (!checkArity(nbInputs, nbOutputs, kNbInputs, kNbOutputs))
    {
        return -1;
    }
    ShapeCheck check(kName, kPortNames, in);
    if (!check.ranks(kRanks, kNbInputs))
    {
        return -1;
    }
    Attributes const& a = mAttributes;
    int64_t const experts = check.dim(kUP, 0);
    int64_t const inter = check.dim(kUP, 1);
    int64_t const hidden = check.dim(kH, 1);
    if (experts >= 0)
    {
        check.require(experts % a.nGroup == 0, "experts (experts_up dim 0) must be a multiple of n_group");
        int64_t const perGroup = experts / a.nGroup;
        check.require(a.nGroup == 1 || perGroup >= 2, "each router group needs at least 2 experts");
        check.require(int64_t(a.topkGroup) * perGroup >= a.topK, "top_k exceeds the experts of topk_group groups");
    }
    check.equal(kLOGITS, 0, check.dim(kH, 0), "tokens of h");
    check.equal(kLOGITS, 1, experts, "experts");
    check.equal(kBIAS, 0, experts, "experts");
    check.equal(kUP, 2, hidden, "expert input width, h dim 1");
    check.equal(kDOWN, 0, experts, "experts");
    check.equal(kDOWN, 1, hidden, "expert input width, h dim 1");
    check.equal(kDOWN, 2, inter, "expert width, experts_up dim 1");
    return check.ok() ? 0 : -1;
}

MoeSizes MoeDispatchPlugin::sizes(Dims const& h, Dims const& up) const
{
    MoeSizes s{};
    s.tokens = h.d[0];
    s.hidden = int(h.d[1]);
    s.experts = int(up.d[0]);
    s.inter = int(up.d[1]);
    s.topK = mAttributes.topK;
    s.nGroup = mAttributes.nGroup;
    s.topkGroup = mAttributes.topkGroup;
    s.normTopkProb = mAttributes.normTopkProb != 0;
    s.scaling = mAttributes.scaling;
    return s;
}

size_t MoeDispatchPlugin::getWorkspaceSize(
    DynamicPluginTensorDesc const* inputs, int32_t nbInputs, DynamicPluginTensorDesc const*, int32_t) const noexcept
{
    return nbInputs == kNbInputs ? moeWorkspaceBytes(sizes(inputs[kH].max, inputs[kUP].max)) : 0;
}

int32_t MoeDispatchPlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const*,
    void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept
{
    MoeBuffers io{};
    io.h = inputs[kH];
    io.logits = static_cast<float const*>(inputs[kLOGITS]);
    io.bias = static_cast<float const*>(inputs[kBIAS]);
    io.up = inputs[kUP];
    io.down = inputs[kDOWN];
    io.out = static_cast<float*>(outputs[0]);
    MoeSizes const s = sizes(inputDesc[kH].dims, inputDesc[kUP].dims);
    cudaError_t const status = moeEnqueue(activationType(inputDesc[kH].type), s, io, workspace, stream);
    if (status != cudaSuccess)
    {
        logError(std::string(kName) + ": kernel launch failed: " + cudaErrorText(status));
        return -1;
    }
    return 0;
}

PluginFieldCollection const* MoeDispatchPlugin::getFieldsToSerialize() noexcept
{
    mFields = FieldWriter();
    mFields.addInt("top_k", mAttributes.topK);
    mFields.addInt("n_group", mAttributes.nGroup);
    mFields.addInt("topk_group", mAttributes.topkGroup);
    mFields.addInt("norm_topk_prob", mAttributes.normTopkProb);
    mFields.addFloat("routed_scaling_factor", mAttributes.scaling);
    return mFields.collection();
}

MoeDispatchCreator::MoeDispatchCreator()
    : CreatorBase(kName,
        {{"top_k", PluginFieldType::kINT32}, {"n_group", PluginFieldType::kINT32},
            {"topk_group", PluginFieldType::kINT32}, {"norm_topk_prob", PluginFieldType::kINT32},
            {"routed_scaling_factor", PluginFieldType::kFLOAT32}})
{
}

IPluginV3* MoeDispatchCreator::createPlugin(char const*, PluginFieldCollection const* fc, TensorRTPhase) noexcept
{
    try
    {
        FieldReader r(kName, fc);
        MoeDispatchPlugin::Attributes a{};
        a.topK = r.getInt("top_k", 1, kMoeMaxTopK);
        a.nGroup = r.getInt("n_group", 1, kMoeMaxGroups);
        a.topkGroup = r.getInt("topk_group", 1, kMoeMaxGroups);
        a.normTopkProb = r.getInt("norm_topk_prob", 0, 1);
        a.scaling = r.getFloat("routed_scaling_factor");
        r.require(a.topkGroup <= a.nGroup, "attribute 'topk_group' must not exceed 'n_group'");
        return r.ok() ? newPlugin<MoeDispatchPlugin>(a) : nullptr;
    }
    catch (...)
    {
        logError(std::string(kName) + ": createPlugin failed");
        return nullptr;
    }
}

} // namespace ndp
