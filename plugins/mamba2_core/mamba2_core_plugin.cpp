#include "mamba2_core_plugin.h"

#include <sstream>

namespace ndp
{
using namespace nvinfer1;

namespace
{

constexpr char const* kName = "Mamba2Core";
constexpr int32_t kNbInputs = 10;
constexpr int32_t kNbOutputs = 3;
// inputs xbc dt mask conv_state ssm_state conv_weight conv_bias dt_bias A_log D | outputs y conv ssm
constexpr char const* kSignature = "TTfTfTTTTTfTf";
constexpr char const* kPortNames[] = {"xbc", "dt", "mask", "conv_state", "ssm_state", "conv_weight", "conv_bias",
    "dt_bias", "A_log", "D", "y", "new_conv_state", "new_ssm_state"};
constexpr int32_t kRanks[] = {3, 3, 2, 3, 4, 2, 1, 1, 1, 1};
enum Port
{
    kXBC,
    kDT,
    kMASK,
    kCONV_STATE,
    kSSM_STATE,
    kCONV_WEIGHT,
    kCONV_BIAS,
    kDT_BIAS,
    kA_LOG,
    kD
};

} // namespace

Mamba2CorePlugin::Mamba2CorePlugin(Attributes const& attributes)
    : PluginBase(kName)
    , mAttributes(attributes)
{
}

IPluginV3* Mamba2CorePlugin::clone() noexcept
{
    return newPlugin<Mamba2CorePlugin>(mAttributes);
}

int32_t Mamba2CorePlugin::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    if (!checkArity(nbInputs, nbOutputs, kNbInputs, kNbOutputs))
    {
        return -1;
    }
    outputTypes[0] = DataType::kFLOAT;
    outputTypes[1] = inputTypes[kCONV_STATE];
    outputTypes[2] = DataType::kFLOAT;
    return 0;
}

int32_t Mamba2CorePlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const*, int32_t,
    DimsExprs* outputs, int32_t nbOutputs, IExprBuilder& exprBuilder) noexcept
{
    if (!checkArity(nbInputs, nbOutputs, kNbInputs, kNbOutputs))
    {
        return -1;
    }
    if (!checkRanks(kName, kPortNames, inputs, kRanks, kNbInputs))
    {
        return -1;
    }
    outputs[0].nbDims = 3; // y [B, T, H*P]
    outputs[0].d[0] = inputs[kXBC].d[0];
    outputs[0].d[1] = inputs[kXBC].d[1];
    outputs[0].d[2]
        = exprBuilder.operation(DimensionOperation::kPROD, *inputs[kDT].d[2], *exprBuilder.constant(mAttributes.headDim));
    outputs[1] = inputs[kCONV_STATE];
    outputs[2] = inputs[kSSM_STATE];
    return 0;
}

bool Mamba2CorePlugin::supportsFormatCombination(
    int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept
{
    return nbInputs == kNbInputs && nbOutputs == kNbOutputs && supportsSignature(pos, inOut, kSignature);
}

int32_t Mamba2CorePlugin::configurePlugin(
    DynamicPluginTensorDesc const* in, int32_t nbInputs, DynamicPluginTensorDesc const*, int32_t nbOutputs) noexcept
{
    if (!checkArity(nbInputs, nbOutputs, kNbInputs, kNbOutputs))
    {
        return -1;
    }
    ShapeCheck check(kName, kPortNames, in);
    Attributes const& a = mAttributes;
    if (!check.ranks(kRanks, kNbInputs))
    {
        return -1;
    }
    int64_t const channels = check.dim(kXBC, 2);
    int64_t const heads = check.dim(kDT, 2);
    int64_t const kernel = check.dim(kCONV_WEIGHT, 1);
    check.require(heads < 0 || heads % a.nGroups == 0, "heads (dt dim 2) must be a multiple of n_groups");
    check.require(kernel < 0 || (kernel >= 2 && kernel <= kMamba2MaxConvKernel),
        "conv kernel (conv_weight dim 1) must be 2.." + std::to_string(kMamba2MaxConvKernel));
    if (heads >= 0)
    {
        check.equal(kXBC, 2, heads * a.headDim + 2 * int64_t(a.nGroups) * a.stateSize, "H*P + 2*G*S");
    }
    check.equal(kDT, 0, check.dim(kXBC, 0), "batch of xbc");
    check.equal(kDT, 1, check.dim(kXBC, 1), "new tokens of xbc");
    check.equal(kMASK, 0, check.dim(kXBC, 0), "batch of xbc");
    check.equal(kMASK, 1, check.dim(kXBC, 1), "new tokens of xbc");
    check.equal(kCONV_STATE, 0, check.dim(kXBC, 0), "batch of xbc");
    check.equal(kCONV_STATE, 1, channels, "conv channels C");
    check.equal(kCONV_STATE, 2, kernel < 0 ? -1 : kernel - 1, "conv kernel - 1");
    check.equal(kSSM_STATE, 0, check.dim(kXBC, 0), "batch of xbc");
    check.equal(kSSM_STATE, 1, heads, "heads H");
    check.equal(kSSM_STATE, 2, a.headDim, "head_dim");
    check.equal(kSSM_STATE, 3, a.stateSize, "state_size");
    check.equal(kCONV_WEIGHT, 0, channels, "conv channels C");
    check.equal(kCONV_BIAS, 0, channels, "conv channels C");
    check.equal(kDT_BIAS, 0, heads, "heads H");
    check.equal(kA_LOG, 0, heads, "heads H");
    check.equal(kD, 0, heads, "heads H");
    return check.ok() ? 0 : -1;
}

Mamba2Sizes Mamba2CorePlugin::sizes(Dims const& xbc, Dims const& dt, Dims const& weight) const
{
    Mamba2Sizes s{};
    s.batch = int(xbc.d[0]);
    s.seqlen = int(xbc.d[1]);
    s.channels = int(xbc.d[2]);
    s.kernel = int(weight.d[1]);
    s.heads = int(dt.d[2]);
    s.headDim = mAttributes.headDim;
    s.groups = mAttributes.nGroups;
    s.stateSize = mAttributes.stateSize;
    s.chunk = mAttributes.chunkSize;
    s.dtMin = mAttributes.dtMin;
    s.dtMax = mAttributes.dtMax;
    return s;
}

size_t Mamba2CorePlugin::getWorkspaceSize(
    DynamicPluginTensorDesc const* inputs, int32_t nbInputs, DynamicPluginTensorDesc const*, int32_t) const noexcept
{
    if (nbInputs != kNbInputs)
    {
        return 0;
    }
    return mamba2WorkspaceBytes(sizes(inputs[kXBC].max, inputs[kDT].max, inputs[kCONV_WEIGHT].max));
}

int32_t Mamba2CorePlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const*,
    void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept
{
    Mamba2Sizes const s = sizes(inputDesc[kXBC].dims, inputDesc[kDT].dims, inputDesc[kCONV_WEIGHT].dims);
    Mamba2Buffers io{};
    io.xbc = inputs[kXBC];
    io.dt = inputs[kDT];
    io.mask = static_cast<float const*>(inputs[kMASK]);
    io.convState = inputs[kCONV_STATE];
    io.ssmState = static_cast<float const*>(inputs[kSSM_STATE]);
    io.convWeight = inputs[kCONV_WEIGHT];
    io.convBias = inputs[kCONV_BIAS];
    io.dtBias = inputs[kDT_BIAS];
    io.aLog = inputs[kA_LOG];
    io.d = inputs[kD];
    io.y = static_cast<float*>(outputs[0]);
    io.newConvState = outputs[1];
    io.newSsmState = static_cast<float*>(outputs[2]);
    cudaError_t const status = mamba2Enqueue(activationType(inputDesc[kXBC].type), s, io, workspace, stream);
    if (status != cudaSuccess)
    {
        logError(std::string(kName) + ": kernel launch failed: " + cudaErrorText(status));
        return -1;
    }
    return 0;
}

PluginFieldCollection const* Mamba2CorePlugin::getFieldsToSerialize() noexcept
{
    mFields = FieldWriter();
    mFields.addInt("n_groups", mAttributes.nGroups);
    mFields.addInt("head_dim", mAttributes.headDim);
    mFields.addInt("state_size", mAttributes.stateSize);
    mFields.addInt("chunk_size", mAttributes.chunkSize);
    mFields.addFloat("dt_min", mAttributes.dtMin);
    mFields.addFloat("dt_max", mAttributes.dtMax);
    return mFields.collection();
}

Mamba2CoreCreator::Mamba2CoreCreator()
    : CreatorBase(kName,
        {{"n_groups", PluginFieldType::kINT32}, {"head_dim", PluginFieldType::kINT32},
            {"state_size", PluginFieldType::kINT32}, {"chunk_size", PluginFieldType::kINT32},
            {"dt_min", PluginFieldType::kFLOAT32}, {"dt_max", PluginFieldType::kFLOAT32}})
{
}

IPluginV3* Mamba2CoreCreator::createPlugin(char const*, PluginFieldCollection const* fc, TensorRTPhase) noexcept
{
    try
    {
        FieldReader r(kName, fc);
        Mamba2CorePlugin::Attributes a{};
        a.nGroups = r.getInt("n_groups", 1, 1 << 16);
        a.headDim = r.getInt("head_dim", 1, kMamba2MaxHeadDim);
        a.stateSize = r.getInt("state_size", 1, 1 << 16);
        a.chunkSize = r.getInt("chunk_size", 1, kMamba2MaxChunk);
        a.dtMin = r.getFloat("dt_min");
        a.dtMax = r.getFloat("dt_max");
        r.require(a.dtMin >= 0.f && a.dtMin <= a.dtMax, "attributes must satisfy 0 <= dt_min <= dt_max");
        return r.ok() ? newPlugin<Mamba2CorePlugin>(a) : nullptr;
    }
    catch (...)
    {
        logError(std::string(kName) + ": createPlugin failed");
        return nullptr;
    }
}

} // namespace ndp
