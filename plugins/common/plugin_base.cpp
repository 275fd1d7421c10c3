#include "plugin_base.h"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <sstream>

namespace ndp
{
using namespace nvinfer1;

namespace
{
ILoggerFinder* gLoggerFinder = nullptr;
}

void setLoggerFinder(ILoggerFinder* finder) noexcept
{
    gLoggerFinder = finder;
}

void logError(std::string const& message) noexcept
{
    std::string const text = "[nemotron_deploy plugins] " + message;
    ILogger* logger = gLoggerFinder != nullptr ? gLoggerFinder->findLogger() : nullptr;
    if (logger != nullptr)
    {
        logger->log(ILogger::Severity::kERROR, text.c_str());
    }
    else
    {
        std::fprintf(stderr, "%s\n", text.c_str());
    }
}

bool isActivationType(DataType type) noexcept
{
    return type == DataType::kFLOAT || type == DataType::kHALF || type == DataType::kBF16;
}

ActivationType activationType(DataType type) noexcept
{
    return type == DataType::kHALF ? ActivationType::kHALF
        : type == DataType::kBF16  ? ActivationType::kBF16
                                   : ActivationType::kFLOAT;
}

char const* typeName(DataType type) noexcept
{
    switch (type)
    {
    case DataType::kFLOAT: return "float32";
    case DataType::kHALF: return "float16";
    case DataType::kBF16: return "bfloat16";
    case DataType::kINT32: return "int32";
    case DataType::kINT64: return "int64";
    case DataType::kBOOL: return "bool";
    default: return "another type";
    }
}

int64_t volume(Dims const& dims) noexcept
{
    int64_t v = 1;
    for (int32_t i = 0; i < dims.nbDims; ++i)
    {
        v *= dims.d[i];
    }
    return v;
}

FieldReader::FieldReader(char const* pluginName, PluginFieldCollection const* fields)
    : mPlugin(pluginName)
    , mFields(fields)
{
    if (fields == nullptr)
    {
        mErrors.emplace_back("no attributes were given");
    }
}

PluginField const* FieldReader::find(char const* name, PluginFieldType type)
{
    if (mFields == nullptr)
    {
        return nullptr;
    }
    for (int32_t i = 0; i < mFields->nbFields; ++i)
    {
        PluginField const& f = mFields->fields[i];
        if (f.name != nullptr && std::strcmp(f.name, name) == 0)
        {
            if (f.type != type || f.length != 1 || f.data == nullptr)
            {
                mErrors.push_back(std::string("attribute '") + name + "' must be one "
                    + (type == PluginFieldType::kINT32 ? "INT (int32)" : "FLOAT (float32)") + " value");
                return nullptr;
            }
            return &f;
        }
    }
    mErrors.push_back(std::string("attribute '") + name + "' is missing");
    return nullptr;
}

int32_t FieldReader::getInt(char const* name, int32_t minValue, int32_t maxValue)
{
    PluginField const* f = find(name, PluginFieldType::kINT32);
    if (f == nullptr)
    {
        return minValue;
    }
    int32_t const v = *static_cast<int32_t const*>(f->data);
    if (v < minValue || v > maxValue)
    {
        std::ostringstream s;
        s << "attribute '" << name << "' is " << v << ", expected " << minValue << ".." << maxValue;
        mErrors.push_back(s.str());
        return minValue;
    }
    return v;
}

float FieldReader::getFloat(char const* name)
{
    PluginField const* f = find(name, PluginFieldType::kFLOAT32);
    if (f == nullptr)
    {
        return 0.f;
    }
    float const v = *static_cast<float const*>(f->data);
    if (std::isnan(v))
    {
        mErrors.push_back(std::string("attribute '") + name + "' is NaN");
    }
    return v;
}

void FieldReader::require(bool condition, std::string const& message)
{
    if (!condition)
    {
        mErrors.push_back(message);
    }
}

bool FieldReader::ok() const
{
    for (std::string const& e : mErrors)
    {
        logError(mPlugin + ": " + e);
    }
    return mErrors.empty();
}

bool ShapeCheck::ranks(int32_t const* wanted, int32_t nbInputs)
{
    for (int32_t i = 0; i < nbInputs; ++i)
    {
        if (mIn[i].desc.dims.nbDims != wanted[i])
        {
            require(false,
                std::string("input '") + mPorts[i] + "' has rank " + std::to_string(mIn[i].desc.dims.nbDims)
                    + ", expected " + std::to_string(wanted[i]));
        }
    }
    return ok();
}

void ShapeCheck::equal(int port, int axis, int64_t want, char const* rule)
{
    int64_t const have = dim(port, axis);
    if (have >= 0 && want >= 0 && have != want)
    {
        std::ostringstream s;
        s << "input '" << mPorts[port] << "' dim " << axis << " is " << have << ", expected " << want << " (" << rule
          << ")";
        mErrors.push_back(s.str());
    }
}

void ShapeCheck::require(bool condition, std::string const& message)
{
    if (!condition)
    {
        mErrors.push_back(message);
    }
}

bool ShapeCheck::ok() const
{
    for (std::string const& e : mErrors)
    {
        logError(std::string(mPlugin) + ": " + e);
    }
    return mErrors.empty();
}

bool checkRanks(char const* plugin, char const* const* portNames, DimsExprs const* inputs, int32_t const* wanted,
    int32_t nbInputs) noexcept
{
    for (int32_t i = 0; i < nbInputs; ++i)
    {
        if (inputs[i].nbDims != wanted[i])
        {
            logError(std::string(plugin) + ": input '" + portNames[i] + "' has rank "
                + std::to_string(inputs[i].nbDims) + ", expected " + std::to_string(wanted[i]));
            return false;
        }
    }
    return true;
}

void FieldWriter::addInt(char const* name, int32_t value)
{
    mValues.push_back(Value{name, true, value, 0.f});
}

void FieldWriter::addFloat(char const* name, float value)
{
    mValues.push_back(Value{name, false, 0, value});
}

PluginFieldCollection const* FieldWriter::collection()
{
    mFields.clear();
    for (Value const& v : mValues)
    {
        mFields.emplace_back(v.name, v.isInt ? static_cast<void const*>(&v.i) : static_cast<void const*>(&v.f),
            v.isInt ? PluginFieldType::kINT32 : PluginFieldType::kFLOAT32, 1);
    }
    mCollection.nbFields = static_cast<int32_t>(mFields.size());
    mCollection.fields = mFields.data();
    return &mCollection;
}

IPluginCapability* PluginBase::getCapabilityInterface(PluginCapabilityType type) noexcept
{
    switch (type)
    {
    case PluginCapabilityType::kCORE: return static_cast<IPluginV3OneCore*>(this);
    case PluginCapabilityType::kBUILD: return static_cast<IPluginV3OneBuild*>(this);
    case PluginCapabilityType::kRUNTIME: return static_cast<IPluginV3OneRuntime*>(this);
    }
    return nullptr;
}

bool PluginBase::supportsSignature(int32_t pos, DynamicPluginTensorDesc const* inOut, char const* signature) const
    noexcept
{
    PluginTensorDesc const& d = inOut[pos].desc;
    if (d.format != TensorFormat::kLINEAR)
    {
        return false;
    }
    if (signature[pos] == 'f')
    {
        return d.type == DataType::kFLOAT;
    }
    // 'T': position 0 picks the activation type, every other 'T' port must match it
    DataType const t = signature[0] == 'T' ? inOut[0].desc.type : d.type;
    return isActivationType(d.type) && d.type == t;
}

bool PluginBase::checkArity(int32_t nbInputs, int32_t nbOutputs, int32_t wantInputs, int32_t wantOutputs) const
    noexcept
{
    if (nbInputs == wantInputs && nbOutputs == wantOutputs)
    {
        return true;
    }
    std::ostringstream s;
    s << mName << ": expected " << wantInputs << " inputs and " << wantOutputs << " outputs, got " << nbInputs
      << " and " << nbOutputs;
    logError(s.str());
    return false;
}

CreatorBase::CreatorBase(char const* name, std::vector<std::pair<char const*, PluginFieldType>> const& fields)
    : mName(name)
{
    for (auto const& [fieldName, type] : fields)
    {
        mFields.emplace_back(fieldName, nullptr, type, 1);
    }
    mCollection.nbFields = static_cast<int32_t>(mFields.size());
    mCollection.fields = mFields.data();
}

} // namespace ndp
