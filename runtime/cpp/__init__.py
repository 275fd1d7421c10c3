"""The C++ runtime's sources (include/, src/, examples/, tests/, CMakeLists.txt) and `build`, which
compiles them the way `nemotron-deploy plugins build` compiles the plugins (docs/cpp.md)."""
