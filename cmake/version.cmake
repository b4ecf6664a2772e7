# Writes the build's version and git commit into OUT (from src/core/version.cpp.in) at every build, so that
# the KSPSHA of every output names the commit the binary was built from, not the one CMake was configured at.
# The file is rewritten only when its text changes (configure_file), so an unchanged commit recompiles nothing.
# A working tree with uncommitted changes to tracked files is marked "-dirty".
#   cmake -DSRC=<source dir> -DOUT=<generated version.cpp> -DPROJECT_VERSION=<x.y.z> -P cmake/version.cmake
execute_process(COMMAND git rev-parse --short=12 HEAD
  WORKING_DIRECTORY ${SRC}
  OUTPUT_VARIABLE KSPECDR_GIT_SHA OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
if(KSPECDR_GIT_SHA)
  execute_process(COMMAND git diff --quiet HEAD --
    WORKING_DIRECTORY ${SRC} RESULT_VARIABLE KSPECDR_GIT_DIRTY OUTPUT_QUIET ERROR_QUIET)
  if(KSPECDR_GIT_DIRTY EQUAL 1)
    string(APPEND KSPECDR_GIT_SHA "-dirty")
  endif()
else()
  set(KSPECDR_GIT_SHA "unknown")
endif()
configure_file(${SRC}/src/core/version.cpp.in ${OUT} @ONLY)
