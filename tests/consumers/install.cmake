# cmake -P install.cmake: configures the iopgtable source tree on its own (library only) and
# installs it into a fresh prefix, as a user would before find_package(iopgtable).
#   -DSOURCE_DIR=<iopgtable source> -DWORK_DIR=<scratch dir> -DGENERATOR=<generator>
#   [-DCXX_COMPILER=<path>] [-DMAKE_PROGRAM=<path>]
# Leaves the installed tree in <WORK_DIR>/prefix.
foreach(var SOURCE_DIR WORK_DIR GENERATOR)
  if(NOT DEFINED ${var})
    message(FATAL_ERROR "install.cmake: -D${var}=... is required")
  endif()
endforeach()

set(build ${WORK_DIR}/build)
set(prefix ${WORK_DIR}/prefix)
file(REMOVE_RECURSE ${build} ${prefix})

set(options -G "${GENERATOR}"
  -DIOPGTABLE_BUILD_TESTS=OFF -DIOPGTABLE_BUILD_TOOLS=OFF
  -DIOPGTABLE_BUILD_BENCH=OFF -DIOPGTABLE_BUILD_FUZZ=OFF)
if(CXX_COMPILER)
  list(APPEND options -DCMAKE_CXX_COMPILER=${CXX_COMPILER})
endif()
if(MAKE_PROGRAM)
  list(APPEND options -DCMAKE_MAKE_PROGRAM=${MAKE_PROGRAM})
endif()

function(run)
  execute_process(COMMAND ${ARGV} RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    string(REPLACE ";" " " shown "${ARGV}")
    message(FATAL_ERROR "failed (${rc}): ${shown}")
  endif()
endfunction()

run(${CMAKE_COMMAND} -S ${SOURCE_DIR} -B ${build} ${options})
run(${CMAKE_COMMAND} --install ${build} --prefix ${prefix})

foreach(file include/iopgtable/iopgtable.hpp
             share/cmake/iopgtable/iopgtableConfig.cmake
             share/cmake/iopgtable/iopgtableConfigVersion.cmake
             share/cmake/iopgtable/iopgtableTargets.cmake)
  if(NOT EXISTS ${prefix}/${file})
    message(FATAL_ERROR "the install is missing ${file}")
  endif()
endforeach()
file(GLOB_RECURSE headers RELATIVE ${SOURCE_DIR}/include ${SOURCE_DIR}/include/iopgtable/*.hpp)
foreach(header IN LISTS headers)
  if(NOT EXISTS ${prefix}/include/${header})
    message(FATAL_ERROR "the install is missing the public header ${header}")
  endif()
endforeach()
message(STATUS "installed iopgtable into ${prefix}")
