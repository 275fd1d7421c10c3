// nemotron-deploy C++ runtime: everything in one include.
#pragma once

#include "nemotron_deploy/decode.h"
#include "nemotron_deploy/error.h"
#include "nemotron_deploy/manifest.h"
#include "nemotron_deploy/sampling.h"
#include "nemotron_deploy/session.h"
#include "nemotron_deploy/tensorrt_engine.h"
