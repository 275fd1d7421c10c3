// The types of the generated <plugin>_contract.h headers (plugins/contract_header.py writes them from
// each plugin's contract.json). No TensorRT types: plain data that plugin_base.cpp turns into TensorRT's.
#pragma once

#include <cstdint>
#include <limits>

namespace ndp {

enum class FieldKind {
  kINT,   // ONNX INT -> PluginField kINT32
  kFLOAT  // ONNX FLOAT -> PluginField kFLOAT32
};

constexpr double kUnbounded = std::numeric_limits<double>::infinity();

//! One attribute: its accepted range (inclusive; int bounds are exact in a double) and, if not -1,
//! the index of the attribute it must not exceed.
struct FieldSpec {
  char const* name;
  FieldKind kind;
  double min;
  double max;
  int32_t atMost;
};

//! A plugin's whole contract. Ports are numbered inputs first, then outputs.
struct Contract {
  char const* name;
  char const* version;
  char const* pluginNamespace;
  int32_t nbInputs;
  int32_t nbOutputs;
  char const* const* portNames;
  char const* portTypes;  // per port: 'T' the activation type, 'f' float32
  int32_t const* portRanks;
  int32_t activationInput;  // the input whose type every 'T' port has
  FieldSpec const* fields;
  int32_t nbFields;
};

}  // namespace ndp
