"""Solutions to lesson 08's exercises. Each block replaces the notebook cell of the same exercise."""

# %% exercise-1
def roi_align_shifted(features, rois, PH, PW, spatial_scale, sampling_ratio):
    # roi_geometry(..., aligned=True) subtracts 0.5 from every scaled coordinate and does not widen
    # tiny boxes; everything else is the same loop
    return roi_align_loops(features, rois, PH, PW, spatial_scale, sampling_ratio, aligned=True)

# %% exercise-2
# on the stride-8 map the box is 25 x 15 feature pixels: ceil(15 / 7) = 3 rows and ceil(25 / 7) = 4
# columns of samples per bin, 49 bins
num_samples = 49 * 3 * 4

# %% exercise-3
answer_3 = "b"
